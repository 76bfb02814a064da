// Tests of the local chain service (service/chain-server.mjs), run as a child process over HTTP.
const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
    Address, Cell, beginCell, contractAddress, toNano, internal, external, storeMessage, storeMessageRelaxed,
} = require('@ton/core');
const { keyPairFromSeed, sign } = require('@ton/crypto');

const SERVER = path.join(__dirname, '..', 'service', 'chain-server.mjs');
const ROOT = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'build', 'root.json'), 'utf8'));
const RAW = /^0:[0-9a-f]{64}$/;

// Standard wallet v4r2 code (hash feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0).
const WALLET_V4R2_CODE = Cell.fromBase64(
    'te6ccgECFAEAAtQAART/APSkE/S88sgLAQIBIAIPAgFIAwYC5tAB0NMDIXGwkl8E4CLXScEgkl8E4ALTHyGCEHBsdWe9IoIQZHN0cr2wkl8F4AP6QDAg+kQByMoHy//J0O1E0IEBQNch9AQwXIEBCPQKb6Exs5JfB+AF0z/IJYIQcGx1Z7qSODDjDQOCEGRzdHK6kl8G4w0EBQB4AfoA9AQw+CdvIjBQCqEhvvLgUIIQcGx1Z4MesXCAGFAEywUmzxZY+gIZ9ADLaRfLH1Jgyz8gyYBA+wAGAIpQBIEBCPRZMO1E0IEBQNcgyAHPFvQAye1UAXKwjiOCEGRzdHKDHrFwgBhQBcsFUAPPFiP6AhPLassfyz/JgED7AJJfA+ICASAHDgIBIAgNAgFYCQoAPbKd+1E0IEBQNch9AQwAsjKB8v/ydABgQEI9ApvoTGACASALDAAZrc52omhAIGuQ64X/wAAZrx32omhAEGuQ64WPwAARuMl+1E0NcLH4AFm9JCtvaiaECAoGuQ+gIYRw1AgIR6STfSmRDOaQPp/5g3gSgBt4EBSJhxWfMYQE+PKDCNcYINMf0x/THwL4I7vyZO1E0NMf0x/T//QE0VFDuvKhUVG68qIF+QFUEGT5EPKj+AAkpMjLH1JAyx9SMMv/UhD0AMntVPgPAdMHIcAAn2xRkyDXSpbTB9QC+wDoMOAhwAHjACHAAuMAAcADkTDjDQOkyMsfEssfy/8QERITAG7SB/oA1NQi+QAFyMoHFcv/ydB3dIAYyMsFywIizxZQBfoCFMtrEszMyXP7AMhAFIEBCPRR8qcCAHCBAQjXGPoA0z/IVCBHgQEI9FHyp4IQbm90ZXB0gBjIywXLAlAGzxZQBPoCFMtqEssfyz/Jc/sAAgBsgQEI1xj6ANM/MFIkgQEI9Fnyp4IQZHN0cnB0gBjIywXLAlAFzxZQA/oCE8tqyx8Syz/Jc/sAAAr0AMntVA==');
const SUBWALLET = 698983191;
const ADD_IMAGE = 0xc0c00003;
const EXCESSES = 0xd53276db;

const ROOT_PARAMS = { pricePerToken: 1000n, promptMult: 10000, cachedMult: 1000, completionMult: 30000,
    reasoningMult: 30000, proxyCommissionBps: 500, minClientStake: toNano('1'), closeDelay: 3600 };

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'cocoon-chain-'));
process.on('exit', () => fs.rmSync(tmpRoot, { recursive: true, force: true }));

// ---- process helpers ----

function startServer(stateFile, extra = []) {
    const proc = spawn(process.execPath, [SERVER, '--state', stateFile, '--port', '0', ...extra],
        { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    proc.stderr.on('data', (d) => { stderr += d; });
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal, stderr })));
    const listening = new Promise((resolve, reject) => {
        proc.stdout.on('data', (d) => {
            stdout += d;
            const nl = stdout.indexOf('\n');
            if (nl >= 0) resolve(JSON.parse(stdout.slice(0, nl)));
        });
        exited.then((r) => reject(new Error(`server exited (${r.code}): ${r.stderr}`)));
    });
    listening.catch(() => {});   // awaited by openServer only
    return { proc, exited, listening, stdout: () => stdout };
}

async function openServer(stateFile, extra) {
    const s = startServer(stateFile, extra);
    const info = await s.listening;
    return { ...s, info, url: `http://127.0.0.1:${info.port}` };
}

async function stopServer(srv) {
    srv.proc.kill('SIGTERM');
    return srv.exited;
}

async function call(srv, p, body, { method = body === undefined ? 'GET' : 'POST', raw, contentType = 'application/json' } = {}) {
    const init = { method, headers: {} };
    if (method === 'POST') {
        init.headers['Content-Type'] = contentType;
        init.body = raw !== undefined ? raw : JSON.stringify(body);
    }
    const r = await fetch(srv.url + p, init);
    const json = await r.json();
    return { status: r.status, json, headers: r.headers };
}

async function ok(srv, p, body) {
    const r = await call(srv, p, body);
    assert.equal(r.status, 200, `${p}: ${JSON.stringify(r.json)}`);
    return r.json;
}

async function expectError(srv, p, body, status, code, opts) {
    const r = await call(srv, p, body, opts);
    assert.equal(r.status, status, `${p} ${JSON.stringify(body)}: ${JSON.stringify(r.json)}`);
    assert.equal(typeof r.json.error.message, 'string');
    assert.ok(!r.json.error.message.includes('\n'));
    if (code) assert.equal(r.json.error.code, code, r.json.error.message);
    return r.json.error;
}

// ---- wallet v4r2 + root ----

function walletFor(label) {
    const seed = Buffer.alloc(32);
    Buffer.from(label).copy(seed);
    const kp = keyPairFromSeed(seed);
    const data = beginCell().storeUint(0, 32).storeUint(SUBWALLET, 32).storeBuffer(kp.publicKey).storeBit(0).endCell();
    const init = { code: WALLET_V4R2_CODE, data };
    return { kp, init, address: contractAddress(0, init) };
}

// A signed wallet v4r2 external message carrying internal messages (mode 3), as a base64 BoC.
function walletExternal(w, { seqno, validUntil, messages, withInit = false, key = w.kp.secretKey }) {
    const signing = beginCell().storeUint(SUBWALLET, 32).storeUint(validUntil, 32).storeUint(seqno, 32).storeUint(0, 8);
    for (const m of messages) signing.storeUint(3, 8).storeRef(beginCell().store(storeMessageRelaxed(m)).endCell());
    const unsigned = signing.endCell();
    const body = beginCell().storeBuffer(sign(unsigned.hash(), key)).storeSlice(unsigned.beginParse()).endCell();
    const msg = external({ to: w.address, init: withInit ? w.init : undefined, body });
    return beginCell().store(storeMessage(msg)).endCell().toBoc().toString('base64');
}

function rootInit(owner) {
    const p = ROOT_PARAMS;
    const params = beginCell().storeCoins(p.pricePerToken).storeUint(p.promptMult, 32).storeUint(p.cachedMult, 32)
        .storeUint(p.completionMult, 32).storeUint(p.reasoningMult, 32).storeUint(p.proxyCommissionBps, 16)
        .storeCoins(p.minClientStake).storeUint(p.closeDelay, 32).endCell();
    const images = beginCell().storeBit(0).storeBit(0).endCell();
    const data = beginCell().storeAddress(owner).storeAddress(null).storeUint(0, 32)
        .storeUint(0, 16).storeUint(0, 16).storeUint(0, 16).storeUint(0, 16)
        .storeRef(params).storeRef(images).storeBit(0).storeBit(0).endCell();
    return { code: Cell.fromBase64(ROOT.codeBoc64), data };
}

const int = (v) => ({ type: 'int', value: String(v) });
const IMAGE_HASH = 0xabcdef0123456789n;

describe('local chain service', () => {
    const stateFile = path.join(tmpRoot, 'nested', 'dir', 'state.json');
    let srv;
    const w = walletFor('service-test-wallet');
    let root;
    let faucetBalanceBefore;

    before(async () => { srv = await openServer(stateFile); });
    after(async () => { if (srv) await stopServer(srv); });

    test('listening line and status', async () => {
        assert.equal(srv.info.event, 'listening');
        assert.equal(srv.info.host, '127.0.0.1');
        assert.ok(Number.isInteger(srv.info.port) && srv.info.port > 0);
        assert.match(srv.info.faucet, RAW);
        const st = await ok(srv, '/v1/status');
        assert.deepEqual(Object.keys(st).sort(), ['faucet', 'faucet_balance', 'fixed_now', 'now']);
        assert.equal(st.faucet, srv.info.faucet);
        assert.equal(st.fixed_now, null);
        assert.ok(Math.abs(st.now - Date.now() / 1000) < 60);
        assert.ok(BigInt(st.faucet_balance) >= 10n ** 18n - 10n ** 10n);
        assert.equal(fs.statSync(stateFile).mode & 0o777, 0o600);
    });

    test('faucet to a fresh address creates the account with that balance', async () => {
        const target = '0:' + '11'.repeat(32);
        const r = await ok(srv, '/v1/faucet', { address: target, amount: '1234567890' });
        assert.equal(r.transactions.length, 2);
        const [ft, tt] = r.transactions;
        assert.equal(ft.address, srv.info.faucet);
        assert.equal(ft.success, true);
        assert.equal(ft.out_messages, 1);
        assert.equal(tt.address, target);
        assert.equal(tt.bounced, false);
        assert.equal(tt.in_op, null);
        assert.equal(typeof tt.lt, 'string');
        assert.equal(tt.success, false, 'no code: compute phase skipped');
        assert.deepEqual(await ok(srv, '/v1/account', { address: target }), {
            address: target, status: 'uninit', balance: '1234567890', code_hash: null, data_hash: null, last_lt: tt.lt,
        });
        // user-friendly input, number amount; responses use the raw form
        const friendly = Address.parse('0:' + '22'.repeat(32)).toString({ bounceable: false });
        const r2 = await ok(srv, '/v1/faucet', { address: friendly, amount: 5000, bounce: false });
        assert.equal(r2.transactions[1].address, '0:' + '22'.repeat(32));
        const acc = await ok(srv, '/v1/account', { address: friendly });
        assert.equal(acc.balance, '5000');
        assert.deepEqual(await ok(srv, '/v1/account', { address: '0:' + '33'.repeat(32) }), {
            address: '0:' + '33'.repeat(32), status: 'nonexist', balance: '0', code_hash: null, data_hash: null, last_lt: null,
        });
        assert.deepEqual(await ok(srv, '/v1/get', { address: '0:' + '33'.repeat(32), method: 'get_version' }), { exit_code: -256, stack: [] });
        assert.deepEqual(await ok(srv, '/v1/get', { address: target, method: 'get_version' }), { exit_code: -256, stack: [] });
    });

    test('wallet deploys the root via /v1/send; get-method stack round trip', async () => {
        await ok(srv, '/v1/faucet', { address: w.address.toRawString(), amount: toNano('10').toString() });
        root = contractAddress(0, rootInit(w.address));
        const now = (await ok(srv, '/v1/status')).now;
        const boc = walletExternal(w, { seqno: 0, validUntil: now + 600, withInit: true,
            messages: [internal({ to: root, value: toNano('1'), bounce: false, init: rootInit(w.address) })] });
        const r = await ok(srv, '/v1/send', { boc });
        assert.equal(r.transactions.length, 2);
        assert.equal(r.transactions[0].address, w.address.toRawString());
        assert.equal(r.transactions[0].success, true);
        assert.equal(r.transactions[0].exit_code, 0);
        assert.equal(r.transactions[0].action_result_code, 0);
        assert.equal(r.transactions[0].out_messages, 1);
        assert.equal(r.transactions[1].address, root.toRawString());
        assert.equal(r.transactions[1].success, true);
        assert.equal(r.transactions[1].in_op, null);

        const acc = await ok(srv, '/v1/account', { address: root.toString() });
        assert.equal(acc.status, 'active');
        assert.equal(acc.code_hash, ROOT.hash);
        assert.equal(acc.data_hash, rootInit(w.address).data.hash().toString('hex'));
        assert.match(acc.last_lt, /^[0-9]+$/);

        assert.deepEqual(await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_version' }),
            { exit_code: 0, stack: [int(0)] });
        const p = ROOT_PARAMS;
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_params', stack: [] })).stack,
            [p.pricePerToken, p.promptMult, p.cachedMult, p.completionMult, p.reasoningMult, p.proxyCommissionBps,
                p.minClientStake, p.closeDelay].map(int));
        const owner = await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_owner' });
        assert.equal(owner.stack.length, 2);
        assert.equal(owner.stack[0].type, 'slice');
        assert.ok(Cell.fromBase64(owner.stack[0].boc).beginParse().loadAddress().equals(w.address));
        assert.deepEqual(owner.stack[1], { type: 'null' });
        // arguments: ints as strings and numbers
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'is_image_allowed',
            stack: [{ type: 'int', value: 1 }, int(IMAGE_HASH)] })).stack, [int(0)]);
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_images', stack: [int(1)] })).stack,
            [{ type: 'null' }]);
        // a get-method that throws, and a method that does not exist
        assert.deepEqual(await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_images', stack: [int(7)] }),
            { exit_code: 102, stack: [] });
        assert.equal((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'no_such_method' })).exit_code, 11);

        // the owner (the wallet) adds an image: seqno 1, bounceable message with a body
        const add = beginCell().storeUint(ADD_IMAGE, 32).storeUint(7, 64).storeUint(1, 8).storeUint(IMAGE_HASH, 256).endCell();
        const r2 = await ok(srv, '/v1/send', { boc: walletExternal(w, { seqno: 1, validUntil: now + 600,
            messages: [internal({ to: root, value: toNano('0.05'), bounce: true, body: add })] }) });
        assert.deepEqual(r2.transactions.map((t) => [t.address, t.in_op, t.success]), [
            [w.address.toRawString(), r2.transactions[0].in_op, true],
            [root.toRawString(), ADD_IMAGE, true],
            [w.address.toRawString(), EXCESSES, true],
        ]);
        assert.equal(r2.transactions[1].out_messages, 2, 'log + excesses');
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_version' })).stack, [int(1)]);
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'is_image_allowed',
            stack: [int(1), int(IMAGE_HASH)] })).stack, [int(-1)]);
        const images = await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_images', stack: [int(1)] });
        assert.equal(images.stack[0].type, 'cell');
        // cell / slice / builder / tuple / null / nan arguments are accepted (the root ignores extras below its args)
        const cellB64 = beginCell().storeUint(5, 8).endCell().toBoc().toString('base64');
        const extra = await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_version', stack: [
            { type: 'cell', boc: cellB64 }, { type: 'slice', boc: cellB64 }, { type: 'builder', boc: cellB64 },
            { type: 'tuple', items: [int(1), { type: 'null' }, { type: 'tuple', items: [] }] }, { type: 'nan' }] });
        assert.equal(extra.exit_code, 0);
    });

    test('409 for an external message the contract does not accept', async () => {
        const now = (await ok(srv, '/v1/status')).now;
        const msgs = [internal({ to: root, value: toNano('0.05'), bounce: true })];
        const replay = walletExternal(w, { seqno: 1, validUntil: now + 600, messages: msgs });
        const e1 = await expectError(srv, '/v1/send', { boc: replay }, 409, 'external_not_accepted');
        assert.match(e1.message, /not accepted/i);
        const other = walletFor('someone-else');
        await expectError(srv, '/v1/send', { boc: walletExternal(w, { seqno: 2, validUntil: now + 600, messages: msgs,
            key: other.kp.secretKey }) }, 409, 'external_not_accepted');
        // to an account without code
        await expectError(srv, '/v1/send', { boc: walletExternal(other, { seqno: 0, validUntil: now + 600, messages: msgs }) },
            409, 'external_not_accepted');
        // the chain is unchanged and still works
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_version' })).stack, [int(1)]);
        const ok2 = await ok(srv, '/v1/send', { boc: walletExternal(w, { seqno: 2, validUntil: now + 600, messages: msgs }) });
        assert.equal(ok2.transactions[0].success, true);
    });

    test('requests are executed one at a time', async () => {
        const target = '0:' + '44'.repeat(32);
        const { now } = await ok(srv, '/v1/status');
        await ok(srv, '/v1/time', { now });   // one clock second for all: no storage fee between the transfers
        const rs = await Promise.all(Array.from({ length: 8 }, () => call(srv, '/v1/faucet', { address: target, amount: '1000' })));
        for (const r of rs) assert.equal(r.status, 200);
        const lts = rs.map((r) => BigInt(r.json.transactions[0].lt)).sort((a, b) => (a < b ? -1 : 1));
        assert.equal(new Set(lts).size, 8);
        assert.equal((await ok(srv, '/v1/account', { address: target })).balance, '8000');
        const back = await ok(srv, '/v1/time', { now: null });
        assert.ok(back.now >= now && back.now <= Date.now() / 1000 + 1, JSON.stringify(back));
    });

    test('bad input: 400, 404, 405, 413', async () => {
        const good = '0:' + '11'.repeat(32);
        await expectError(srv, '/v1/send', { boc: 'not base64!' }, 400, 'invalid_field');
        await expectError(srv, '/v1/send', { boc: 'AAAA' }, 400, 'invalid_field');
        await expectError(srv, '/v1/send', { boc: 12 }, 400, 'invalid_field');
        await expectError(srv, '/v1/send', {}, 400, 'missing_field');
        await expectError(srv, '/v1/send', { boc: 'AAAA', x: 1 }, 400, 'unknown_field');
        const intMsg = beginCell().store(storeMessage({ info: { type: 'internal', ihrDisabled: true, bounce: false,
            bounced: false, src: Address.parse(good), dest: Address.parse(good), value: { coins: 1n }, ihrFee: 0n,
            forwardFee: 0n, createdLt: 0n, createdAt: 0 }, body: beginCell().endCell() })).endCell();
        const e = await expectError(srv, '/v1/send', { boc: intMsg.toBoc().toString('base64') }, 400, 'invalid_field');
        assert.match(e.message, /external-in/);
        const notMsg = beginCell().storeUint(1, 3).endCell().toBoc().toString('base64');
        await expectError(srv, '/v1/send', { boc: notMsg }, 400, 'invalid_field');

        for (const address of ['0:1234', '0:' + 'zz'.repeat(32), '5:' + '11'.repeat(32), 'EQ' + 'A'.repeat(46), 12, null]) {
            const err = await expectError(srv, '/v1/account', { address }, 400, 'invalid_field');
            assert.match(err.message, /^address: /);
        }
        const friendly = Address.parse(good).toString();
        const badCrc = friendly.slice(0, 47) + (friendly[47] === 'A' ? 'B' : 'A');
        await expectError(srv, '/v1/faucet', { address: badCrc, amount: '1' }, 400, 'invalid_field');
        for (const amount of ['0', '-1', '1.5', '1e9', 1.5, '1000000000000001', 1e16, '', true]) {
            const err = await expectError(srv, '/v1/faucet', { address: good, amount }, 400, 'invalid_field');
            assert.match(err.message, /^amount: /);
        }
        await expectError(srv, '/v1/faucet', { address: good, amount: '1', bounce: 'yes' }, 400, 'invalid_field');
        for (const method of ['', 'get-version', 'a'.repeat(129), 'get version', 5]) {
            const err = await expectError(srv, '/v1/get', { address: good, method }, 400, 'invalid_field');
            assert.match(err.message, /^method: /);
        }
        for (const stack of [{}, [{ type: 'int', value: 'x' }], [{ type: 'int', value: (1n << 256n).toString() }], [{ type: 'foo' }],
            [{ type: 'cell', boc: '!!' }], [{ type: 'int' }], [{ type: 'tuple', items: 3 }], [{ type: 'null', value: '1' }]]) {
            const err = await expectError(srv, '/v1/get', { address: good, method: 'x', stack }, 400, 'invalid_field');
            assert.match(err.message, /^stack/);
        }
        await expectError(srv, '/v1/get', null, 400, 'invalid_json');
        await expectError(srv, '/v1/get', undefined, 400, 'invalid_json', { method: 'POST', raw: '{"address":' });
        await expectError(srv, '/v1/get', undefined, 400, 'unsupported_content_type',
            { method: 'POST', raw: '{}', contentType: 'text/plain' });
        await expectError(srv, '/v1/time', { now: 'soon' }, 400, 'invalid_field');
        await expectError(srv, '/v1/time', {}, 400, 'missing_field');

        await expectError(srv, '/v1/nothing', undefined, 404, 'not_found');
        await expectError(srv, '/', {}, 404, 'not_found');
        const e405 = await call(srv, '/v1/send', undefined, { method: 'GET' });
        assert.equal(e405.status, 405);
        assert.equal(e405.json.error.code, 'method_not_allowed');
        assert.equal(e405.headers.get('allow'), 'POST');
        await expectError(srv, '/v1/status', {}, 405, 'method_not_allowed');
        await expectError(srv, '/v1/send', undefined, 413, 'payload_too_large',
            { method: 'POST', raw: JSON.stringify({ boc: 'A'.repeat(1024 * 1024 + 16) }) });
        assert.equal((await call(srv, '/v1/status')).status, 200);
    });

    test('/v1/time fixes the clock and never goes backwards', async () => {
        const st = await ok(srv, '/v1/status');
        const t = st.now + 100000;
        assert.deepEqual(await ok(srv, '/v1/time', { now: t }), { now: t });
        const st2 = await ok(srv, '/v1/status');
        assert.equal(st2.now, t);
        assert.equal(st2.fixed_now, t);
        const r = await ok(srv, '/v1/faucet', { address: '0:' + '55'.repeat(32), amount: '1' });
        assert.equal(r.transactions[1].success, false);
        const e = await expectError(srv, '/v1/time', { now: t - 1 }, 400, 'time_goes_backwards');
        assert.match(e.message, /backwards/);
        assert.deepEqual(await ok(srv, '/v1/time', { now: String(t) }), { now: t });
        assert.deepEqual(await ok(srv, '/v1/time', { now: t + 50 }), { now: t + 50 });
        // back to wall-clock time: the clock does not fall below the latest time used
        const back = await ok(srv, '/v1/time', { now: null });
        assert.equal(back.now, t + 50);
        const st3 = await ok(srv, '/v1/status');
        assert.equal(st3.fixed_now, null);
        assert.equal(st3.now, t + 50);
        await expectError(srv, '/v1/time', { now: st.now }, 400, 'time_goes_backwards');
        // fixed for the restart test
        assert.deepEqual(await ok(srv, '/v1/time', { now: t + 60 }), { now: t + 60 });
        await ok(srv, '/v1/faucet', { address: '0:' + '55'.repeat(32), amount: '2' });
        faucetBalanceBefore = (await ok(srv, '/v1/status')).faucet_balance;
    });

    test('state survives a restart (SIGTERM, start again)', async (t) => {
        const accounts = [w.address.toRawString(), root.toRawString(), '0:' + '44'.repeat(32), '0:' + '55'.repeat(32)];
        const before = await Promise.all(accounts.map((address) => ok(srv, '/v1/account', { address })));
        const status = await ok(srv, '/v1/status');
        const faucet = srv.info.faucet;
        // requests in flight at SIGTERM: every one that was answered 200 is in the saved state
        const late = '0:' + '66'.repeat(32);
        const pending = Array.from({ length: 3 }, () => call(srv, '/v1/faucet', { address: late, amount: '100' }));
        await new Promise((resolve) => setTimeout(resolve, 20));
        const r = await stopServer(srv);
        const answered = (await Promise.allSettled(pending)).filter((x) => x.status === 'fulfilled' && x.value.status === 200).length;
        t.diagnostic(`requests in flight at SIGTERM answered 200: ${answered}/3`);
        const stdout = srv.stdout();
        srv = undefined;
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, '');
        assert.equal(stdout.split('\n').length, 2, `exactly one line on stdout: ${stdout}`);
        assert.equal(fs.statSync(stateFile).mode & 0o777, 0o600);
        assert.deepEqual(fs.readdirSync(path.dirname(stateFile)), ['state.json'], 'no temporary files left');

        srv = await openServer(stateFile);
        assert.equal(srv.info.faucet, faucet);
        const status2 = await ok(srv, '/v1/status');
        assert.deepEqual({ ...status2, faucet_balance: 0 }, { ...status, faucet_balance: 0 });
        assert.equal(status.faucet_balance, faucetBalanceBefore);
        if (answered === 0) assert.equal(status2.faucet_balance, status.faucet_balance);
        else assert.ok(BigInt(status2.faucet_balance) < BigInt(status.faucet_balance) - BigInt(100 * answered));
        const after = await Promise.all(accounts.map((address) => ok(srv, '/v1/account', { address })));
        assert.deepEqual(after, before);
        assert.equal(after[2].balance, '8000');
        assert.equal((await ok(srv, '/v1/account', { address: late })).balance, String(100 * answered));
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'get_version' })).stack, [int(1)]);
        assert.deepEqual((await ok(srv, '/v1/get', { address: root.toRawString(), method: 'is_image_allowed',
            stack: [int(1), int(IMAGE_HASH)] })).stack, [int(-1)]);
        // the wallet continues with seqno 3; the faucet keeps working
        const msgs = [internal({ to: root, value: toNano('0.05'), bounce: true })];
        const sent = await ok(srv, '/v1/send', { boc: walletExternal(w, { seqno: 3, validUntil: status2.now + 600, messages: msgs }) });
        assert.equal(sent.transactions[0].success, true);
        await ok(srv, '/v1/faucet', { address: '0:' + '44'.repeat(32), amount: '1000' });
        const bal = BigInt((await ok(srv, '/v1/account', { address: '0:' + '44'.repeat(32) })).balance);
        assert.ok(bal > 8000n && bal <= 9000n, `8000 + 1000 minus the storage fee for the clock jump, got ${bal}`);
        assert.equal(BigInt((await ok(srv, '/v1/status')).faucet_balance) < BigInt(faucetBalanceBefore), true);
    });
});

describe('local chain service: start-up failures', () => {
    test('corrupt state file: exit code 2 and one line on stderr', async () => {
        const file = path.join(tmpRoot, 'corrupt.json');
        for (const content of ['{"format": "cocoon-chain-state", ', '{"format":"something-else"}', 'null',
            '{"format":"cocoon-chain-state","version":1,"clock":{"fixed_now":null,"last_now":0},"snapshot":{"contracts":[{"account":"x"}]}}']) {
            fs.writeFileSync(file, content);
            const s = startServer(file);
            const r = await s.exited;
            assert.equal(r.code, 2, r.stderr);
            assert.match(r.stderr, /^chain-server: cannot load state .*corrupt\.json: .+\n$/);
            assert.equal(fs.readFileSync(file, 'utf8'), content, 'the bad file is left alone');
        }
    });

    test('bad arguments: exit code 2', async () => {
        for (const args of [[], ['--state'], ['--state', path.join(tmpRoot, 'x.json'), '--port', 'abc'],
            ['--state', path.join(tmpRoot, 'x.json'), '--bogus', '1']]) {
            const proc = spawn(process.execPath, [SERVER, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
            let stderr = '';
            proc.stderr.on('data', (d) => { stderr += d; });
            const code = await new Promise((resolve) => proc.on('exit', resolve));
            assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
            assert.match(stderr, /^chain-server: .+\n$/);
        }
    });
});
