// Compiles every Cocoon contract with @ton/tolk-js and writes build/<name>.json.
import { runTolkCompiler } from '@ton/tolk-js';
import { Cell } from '@ton/core';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const CONTRACTS = ['worker_channel', 'client_channel', 'root'];

export async function compileContract(name) {
    const srcDir = path.join(here, 'src');
    const r = await runTolkCompiler({
        entrypointFileName: `${name}.tolk`,
        fsReadCallback: (p) => fs.readFileSync(path.isAbsolute(p) ? p : path.join(srcDir, p), 'utf-8'),
    });
    if (r.status !== 'ok') {
        throw new Error(`${name}: ${r.message}`);
    }
    const code = Cell.fromBase64(r.codeBoc64);
    return { name, codeBoc64: r.codeBoc64, hash: code.hash().toString('hex') };
}

async function main() {
    const only = process.argv.slice(2);
    fs.mkdirSync(path.join(here, 'build'), { recursive: true });
    for (const name of CONTRACTS) {
        if (only.length && !only.includes(name)) continue;
        if (!fs.existsSync(path.join(here, 'src', `${name}.tolk`))) continue;
        const c = await compileContract(name);
        fs.writeFileSync(path.join(here, 'build', `${name}.json`),
            JSON.stringify({ name, codeBoc64: c.codeBoc64, hash: c.hash }, null, 2) + '\n');
        console.log(`${name}: ${c.hash}`);
    }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    main().catch((e) => { console.error(e.message); process.exit(1); });
}
