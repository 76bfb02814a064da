const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Cell } = require('@ton/core');

const NAMES = ['worker_channel', 'client_channel', 'root'];

test('rebuilding gives the committed code (build/*.json) and hashes recorded in README.md', async () => {
    const { compileContract, CONTRACTS } = await import(path.join(__dirname, '..', 'build.mjs'));
    assert.deepEqual([...CONTRACTS].sort(), [...NAMES].sort());
    const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf-8');
    for (const name of NAMES) {
        const built = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'build', `${name}.json`), 'utf-8'));
        const fresh = await compileContract(name);
        assert.equal(fresh.codeBoc64, built.codeBoc64, `${name}: code differs from build/${name}.json`);
        assert.equal(fresh.hash, built.hash);
        assert.equal(Cell.fromBase64(built.codeBoc64).hash().toString('hex'), built.hash);
        assert.ok(readme.includes(built.hash), `${name}: hash ${built.hash} not recorded in README.md`);
    }
});

test('compiling twice in one process is deterministic', async () => {
    const { compileContract } = await import(path.join(__dirname, '..', 'build.mjs'));
    for (const name of NAMES) {
        const a = await compileContract(name);
        const b = await compileContract(name);
        assert.equal(a.hash, b.hash);
    }
});
