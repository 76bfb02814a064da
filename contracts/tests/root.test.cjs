const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { Blockchain } = require('@ton/sandbox');
const { Dictionary } = require('@ton/core');
const h = require('./helpers.cjs');
const { beginCell, toNano, contractAddress } = h;

const ROP = {
    CHANGE_OWNER: 0xc0c00001, ACCEPT_OWNER: 0xc0c00002, ADD_IMAGE: 0xc0c00003, REMOVE_IMAGE: 0xc0c00004,
    SET_MODEL: 0xc0c00005, REMOVE_MODEL: 0xc0c00006, SET_PROXY: 0xc0c00007, REMOVE_PROXY: 0xc0c00008,
    SET_PARAMS: 0xc0c00009,
};
const RERR = {
    NOT_OWNER: 100, NOT_PENDING_OWNER: 101, INVALID_ROLE: 102, TOO_MANY_ENTRIES: 103, ALREADY_EXISTS: 104,
    NOT_FOUND: 105, BAD_STRING: 106, BAD_PARAMS: 107, UNKNOWN_OP: 0xffff,
};
const PROXY = 1, WORKER = 2;

function paramsCell(p) {
    return beginCell().storeCoins(p.pricePerToken).storeUint(p.promptMult, 32).storeUint(p.cachedMult, 32)
        .storeUint(p.completionMult, 32).storeUint(p.reasoningMult, 32).storeUint(p.proxyCommissionBps, 16)
        .storeCoins(p.minClientStake).storeUint(p.closeDelay, 32).endCell();
}
const DEFAULT_PARAMS = { pricePerToken: 1000n, promptMult: 10000, cachedMult: 1000, completionMult: 30000,
    reasoningMult: 30000, proxyCommissionBps: 500, minClientStake: toNano('1'), closeDelay: 3600 };

const text = (s) => beginCell().storeBuffer(Buffer.from(s)).endCell();
const hash = (n) => BigInt(n) * 0x1000001n + 0xabcdef00n;

const body = {
    changeOwner: (a, q = 0) => beginCell().storeUint(ROP.CHANGE_OWNER, 32).storeUint(q, 64).storeAddress(a).endCell(),
    acceptOwner: (q = 0) => beginCell().storeUint(ROP.ACCEPT_OWNER, 32).storeUint(q, 64).endCell(),
    addImage: (role, hh, q = 0) => beginCell().storeUint(ROP.ADD_IMAGE, 32).storeUint(q, 64).storeUint(role, 8).storeUint(hh, 256).endCell(),
    removeImage: (role, hh, q = 0) => beginCell().storeUint(ROP.REMOVE_IMAGE, 32).storeUint(q, 64).storeUint(role, 8).storeUint(hh, 256).endCell(),
    setModel: (hh, name, q = 0) => beginCell().storeUint(ROP.SET_MODEL, 32).storeUint(q, 64).storeUint(hh, 256).storeRef(name).endCell(),
    removeModel: (hh, q = 0) => beginCell().storeUint(ROP.REMOVE_MODEL, 32).storeUint(q, 64).storeUint(hh, 256).endCell(),
    setProxy: (key, ep, q = 0) => beginCell().storeUint(ROP.SET_PROXY, 32).storeUint(q, 64).storeUint(key, 256).storeRef(ep).endCell(),
    removeProxy: (key, q = 0) => beginCell().storeUint(ROP.REMOVE_PROXY, 32).storeUint(q, 64).storeUint(key, 256).endCell(),
    setParams: (p, q = 0) => beginCell().storeUint(ROP.SET_PARAMS, 32).storeUint(q, 64).storeRef(paramsCell(p)).endCell(),
};

async function setup() {
    const blockchain = await Blockchain.create();
    const owner = await blockchain.treasury('owner');
    const stranger = await blockchain.treasury('stranger');
    const newOwner = await blockchain.treasury('new-owner');
    const code = await h.compile('root');
    const images = beginCell().storeBit(0).storeBit(0).endCell();
    const data = beginCell().storeAddress(owner.address).storeAddress(null).storeUint(0, 32)
        .storeUint(0, 16).storeUint(0, 16).storeUint(0, 16).storeUint(0, 16)
        .storeRef(paramsCell(DEFAULT_PARAMS)).storeRef(images).storeBit(0).storeBit(0).endCell();
    const init = { code, data };
    const address = contractAddress(0, init);
    const deployRes = await owner.send({ to: address, value: toNano('1'), init });
    const ctx = { blockchain, owner, stranger, newOwner, address, deployRes };
    ctx.get = async (name, args = []) => (await blockchain.runGetMethod(address, name, args)).stackReader;
    ctx.version = async () => (await ctx.get('get_version')).readNumber();
    ctx.send = (b, from = owner) => from.send({ to: address, value: toNano('0.05'), body: b });
    ctx.counts = async () => { const r = await ctx.get('get_counts'); return [r.readNumber(), r.readNumber(), r.readNumber(), r.readNumber()]; };
    ctx.allowed = async (role, hh) => (await ctx.get('is_image_allowed', [{ type: 'int', value: BigInt(role) }, { type: 'int', value: hh }])).readBoolean();
    ctx.model = async (hh) => (await ctx.get('get_model', [{ type: 'int', value: hh }])).readCellOpt();
    ctx.proxy = async (k) => (await ctx.get('get_proxy', [{ type: 'int', value: k }])).readCellOpt();
    return ctx;
}

function expectLog(result, op, version, key) {
    assert.equal(result.externals.length, 1, 'one external-out log');
    const s = result.externals[0].body.beginParse();
    assert.equal(s.loadUint(32), op);
    s.loadUintBig(64);
    assert.equal(s.loadUint(32), version);
    if (key !== undefined) assert.equal(s.loadUintBig(256), key);
}

describe('root registry', () => {
    test('deploy and initial getters', async () => {
        const c = await setup();
        h.expectTx(c.deployRes, { to: c.address, deploy: true, success: true });
        const o = await c.get('get_owner');
        assert.ok(o.readAddress().equals(c.owner.address));
        assert.equal(o.readAddressOpt(), null);
        assert.equal(await c.version(), 0);
        assert.deepEqual(await c.counts(), [0, 0, 0, 0]);
        const p = await c.get('get_params');
        assert.equal(p.readBigNumber(), 1000n);
        assert.equal(p.readNumber(), 10000);
        assert.equal(p.readNumber(), 1000);
        assert.equal(p.readNumber(), 30000);
        assert.equal(p.readNumber(), 30000);
        assert.equal(p.readNumber(), 500);
        assert.equal(p.readBigNumber(), toNano('1'));
        assert.equal(p.readNumber(), 3600);
        assert.equal((await c.get('get_images', [{ type: 'int', value: 1n }])).readCellOpt(), null);
        assert.equal((await c.get('get_models')).readCellOpt(), null);
        assert.equal((await c.get('get_proxies')).readCellOpt(), null);
        assert.equal(await c.allowed(PROXY, hash(1)), false);
    });

    test('attack: every change by a non-owner is refused', async () => {
        const c = await setup();
        const bodies = [body.changeOwner(c.stranger.address), body.addImage(PROXY, hash(1)), body.removeImage(PROXY, hash(1)),
            body.setModel(hash(1), text('m')), body.removeModel(hash(1)), body.setProxy(hash(1), text('e')),
            body.removeProxy(hash(1)), body.setParams(DEFAULT_PARAMS)];
        for (const b of bodies) {
            const r = await c.send(b, c.stranger);
            h.expectTx(r, { to: c.address, exitCode: RERR.NOT_OWNER });
            assert.equal(r.externals.length, 0);
        }
        assert.equal(await c.version(), 0);
    });

    test('two-step ownership transfer', async () => {
        const c = await setup();
        h.expectTx(await c.send(body.acceptOwner(), c.newOwner), { to: c.address, exitCode: RERR.NOT_PENDING_OWNER });
        const r = await c.send(body.changeOwner(c.newOwner.address, 9));
        h.expectTx(r, { to: c.address, success: true });
        expectLog(r, ROP.CHANGE_OWNER, 1, BigInt('0x' + c.newOwner.address.hash.toString('hex')));
        let o = await c.get('get_owner');
        assert.ok(o.readAddress().equals(c.owner.address));
        assert.ok(o.readAddressOpt().equals(c.newOwner.address));
        h.expectTx(await c.send(body.acceptOwner(), c.stranger), { to: c.address, exitCode: RERR.NOT_PENDING_OWNER });
        const r2 = await c.send(body.acceptOwner(), c.newOwner);
        h.expectTx(r2, { to: c.address, success: true });
        expectLog(r2, ROP.ACCEPT_OWNER, 2);
        o = await c.get('get_owner');
        assert.ok(o.readAddress().equals(c.newOwner.address));
        assert.equal(o.readAddressOpt(), null);
        h.expectTx(await c.send(body.addImage(PROXY, hash(1))), { to: c.address, exitCode: RERR.NOT_OWNER });
        h.expectTx(await c.send(body.addImage(PROXY, hash(1)), c.newOwner), { to: c.address, success: true });
        h.expectTx(await c.send(body.acceptOwner(), c.newOwner), { to: c.address, exitCode: RERR.NOT_PENDING_OWNER });
    });

    test('images per role: add, query, remove, duplicates, bad role', async () => {
        const c = await setup();
        const r = await c.send(body.addImage(PROXY, hash(1), 5));
        expectLog(r, ROP.ADD_IMAGE, 1, hash(1));
        await c.send(body.addImage(WORKER, hash(2)));
        await c.send(body.addImage(WORKER, hash(3)));
        assert.equal(await c.allowed(PROXY, hash(1)), true);
        assert.equal(await c.allowed(WORKER, hash(1)), false);
        assert.equal(await c.allowed(WORKER, hash(2)), true);
        assert.equal(await c.allowed(7, hash(2)), false);
        assert.deepEqual(await c.counts(), [1, 2, 0, 0]);
        const dict = (await c.get('get_images', [{ type: 'int', value: 2n }])).readCellOpt();
        const d = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), Dictionary.Values.Bool(), dict);
        assert.deepEqual(d.keys().sort(), [hash(2), hash(3)].sort());
        h.expectTx(await c.send(body.addImage(WORKER, hash(2))), { to: c.address, exitCode: RERR.ALREADY_EXISTS });
        h.expectTx(await c.send(body.addImage(3, hash(2))), { to: c.address, exitCode: RERR.INVALID_ROLE });
        h.expectTx(await c.send(body.removeImage(0, hash(2))), { to: c.address, exitCode: RERR.INVALID_ROLE });
        h.expectTx(await c.send(body.removeImage(PROXY, hash(2))), { to: c.address, exitCode: RERR.NOT_FOUND });
        const r2 = await c.send(body.removeImage(WORKER, hash(2)));
        expectLog(r2, ROP.REMOVE_IMAGE, 4, hash(2));
        assert.equal(await c.allowed(WORKER, hash(2)), false);
        await c.send(body.removeImage(PROXY, hash(1)));
        assert.deepEqual(await c.counts(), [0, 1, 0, 0]);
        assert.equal(await c.version(), 5);
    });

    test('bounded size: at most 16 images per role', async () => {
        const c = await setup();
        for (let i = 0; i < 16; i++) {
            h.expectTx(await c.send(body.addImage(PROXY, hash(i))), { to: c.address, success: true });
        }
        h.expectTx(await c.send(body.addImage(PROXY, hash(100))), { to: c.address, exitCode: RERR.TOO_MANY_ENTRIES });
        h.expectTx(await c.send(body.addImage(WORKER, hash(100))), { to: c.address, success: true });
        await c.send(body.removeImage(PROXY, hash(0)));
        h.expectTx(await c.send(body.addImage(PROXY, hash(100))), { to: c.address, success: true });
        assert.deepEqual(await c.counts(), [16, 1, 0, 0]);
    });

    test('models: set, rename, query, remove', async () => {
        const c = await setup();
        const r = await c.send(body.setModel(hash(1), text('Qwen/Qwen3-32B')));
        expectLog(r, ROP.SET_MODEL, 1, hash(1));
        assert.equal((await c.model(hash(1))).beginParse().loadBuffer(14).toString(), 'Qwen/Qwen3-32B');
        await c.send(body.setModel(hash(1), text('renamed')));
        assert.equal((await c.model(hash(1))).beginParse().loadBuffer(7).toString(), 'renamed');
        await c.send(body.setModel(hash(2), text('other')));
        assert.deepEqual(await c.counts(), [0, 0, 2, 0]);
        const d = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), Dictionary.Values.Cell(), (await c.get('get_models')).readCellOpt());
        assert.equal(d.size, 2);
        h.expectTx(await c.send(body.removeModel(hash(3))), { to: c.address, exitCode: RERR.NOT_FOUND });
        expectLog(await c.send(body.removeModel(hash(1))), ROP.REMOVE_MODEL, 4, hash(1));
        assert.equal(await c.model(hash(1)), null);
        assert.deepEqual(await c.counts(), [0, 0, 1, 0]);
    });

    test('strings are bounded: empty, too long, with refs, not whole bytes refused', async () => {
        const c = await setup();
        const bad = [beginCell().endCell(), beginCell().storeBuffer(Buffer.alloc(127)).storeUint(0, 7).endCell(),
            beginCell().storeBuffer(Buffer.from('ab')).storeRef(text('c')).endCell(), beginCell().storeUint(1, 7).endCell()];
        for (const b of bad) {
            h.expectTx(await c.send(body.setModel(hash(1), b)), { to: c.address, exitCode: RERR.BAD_STRING });
            h.expectTx(await c.send(body.setProxy(hash(1), b)), { to: c.address, exitCode: RERR.BAD_STRING });
        }
        h.expectTx(await c.send(body.setModel(hash(1), text('x'.repeat(127)))), { to: c.address, success: true });
        assert.equal(await c.version(), 1);
    });

    test('bounded size: at most 32 models', async () => {
        const c = await setup();
        for (let i = 0; i < 32; i++) await c.send(body.setModel(hash(i), text('m' + i)));
        assert.deepEqual(await c.counts(), [0, 0, 32, 0]);
        h.expectTx(await c.send(body.setModel(hash(99), text('x'))), { to: c.address, exitCode: RERR.TOO_MANY_ENTRIES });
        h.expectTx(await c.send(body.setModel(hash(5), text('update'))), { to: c.address, success: true });
    });

    test('proxies: set endpoint and key, query, remove', async () => {
        const c = await setup();
        const key = BigInt('0x' + h.keyPair('proxy-key').publicKey.toString('hex'));
        expectLog(await c.send(body.setProxy(key, text('proxy1.example.com:8443'))), ROP.SET_PROXY, 1, key);
        assert.equal((await c.proxy(key)).beginParse().loadBuffer(23).toString(), 'proxy1.example.com:8443');
        assert.equal(await c.proxy(key + 1n), null);
        const d = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), Dictionary.Values.Cell(), (await c.get('get_proxies')).readCellOpt());
        assert.deepEqual(d.keys(), [key]);
        assert.deepEqual(await c.counts(), [0, 0, 0, 1]);
        h.expectTx(await c.send(body.removeProxy(key + 1n)), { to: c.address, exitCode: RERR.NOT_FOUND });
        expectLog(await c.send(body.removeProxy(key)), ROP.REMOVE_PROXY, 2, key);
        assert.equal(await c.proxy(key), null);
        assert.deepEqual(await c.counts(), [0, 0, 0, 0]);
    });

    test('bounded size: at most 32 proxies', async () => {
        const c = await setup();
        for (let i = 0; i < 32; i++) await c.send(body.setProxy(hash(i), text('p' + i)));
        h.expectTx(await c.send(body.setProxy(hash(99), text('x'))), { to: c.address, exitCode: RERR.TOO_MANY_ENTRIES });
        assert.deepEqual(await c.counts(), [0, 0, 0, 32]);
    });

    test('price parameters: set, validate, edges (zero, maximum coins)', async () => {
        const c = await setup();
        const p = { pricePerToken: h.MAX_COINS, promptMult: 0xffffffff, cachedMult: 0, completionMult: 1,
            reasoningMult: 2, proxyCommissionBps: 10000, minClientStake: h.MAX_COINS, closeDelay: 2592000 };
        const r = await c.send(body.setParams(p, 3));
        expectLog(r, ROP.SET_PARAMS, 1, 0n);
        const g = await c.get('get_params');
        assert.equal(g.readBigNumber(), h.MAX_COINS);
        assert.equal(g.readNumber(), 0xffffffff);
        assert.equal(g.readNumber(), 0);
        assert.equal(g.readNumber(), 1);
        assert.equal(g.readNumber(), 2);
        assert.equal(g.readNumber(), 10000);
        assert.equal(g.readBigNumber(), h.MAX_COINS);
        assert.equal(g.readNumber(), 2592000);
        h.expectTx(await c.send(body.setParams({ ...p, proxyCommissionBps: 10001 })), { to: c.address, exitCode: RERR.BAD_PARAMS });
        h.expectTx(await c.send(body.setParams({ ...p, closeDelay: 2592001 })), { to: c.address, exitCode: RERR.BAD_PARAMS });
        const zero = { pricePerToken: 0n, promptMult: 0, cachedMult: 0, completionMult: 0, reasoningMult: 0,
            proxyCommissionBps: 0, minClientStake: 0n, closeDelay: 0 };
        h.expectTx(await c.send(body.setParams(zero)), { to: c.address, success: true });
        assert.equal((await c.get('get_params')).readBigNumber(), 0n);
        assert.equal(await c.version(), 2);
    });

    test('config version increases on every change, each with one log', async () => {
        const c = await setup();
        const seq = [body.addImage(PROXY, hash(1)), body.setModel(hash(1), text('a')), body.setProxy(hash(1), text('b')),
            body.setParams(DEFAULT_PARAMS), body.changeOwner(c.owner.address)];
        for (let i = 0; i < seq.length; i++) {
            const r = await c.send(seq[i]);
            assert.equal(r.externals.length, 1);
            assert.equal(await c.version(), i + 1);
        }
        const failed = await c.send(body.addImage(PROXY, hash(1)));
        assert.equal(failed.externals.length, 0);
        assert.equal(await c.version(), seq.length);
    });

    test('changes return the unused value as standard excesses (op 0xd53276db, same query id)', async () => {
        const c = await setup();
        const r = await c.owner.send({ to: c.address, value: toNano('1'), body: body.addImage(PROXY, hash(1), 77) });
        const ex = h.expectTx(r, { from: c.address, to: c.owner.address, op: 0xd53276db });
        assert.ok(ex.value > toNano('0.9'));
        assert.equal(ex.body.beginParse().skip(32).loadUintBig(64), 77n);
        const failed = await c.stranger.send({ to: c.address, value: toNano('1'), body: body.addImage(PROXY, hash(2)) });
        h.expectTx(failed, { from: c.address, to: c.stranger.address, inMessageBounced: true });
    });

    test('get_images with an invalid role fails; is_image_allowed returns false', async () => {
        const c = await setup();
        await c.send(body.addImage(PROXY, hash(1)));
        await assert.rejects(c.blockchain.runGetMethod(c.address, 'get_images', [{ type: 'int', value: 3n }]),
            (e) => String(e.message).includes('exit_code: 102'));
        assert.equal(await c.allowed(0, hash(1)), false);
    });

    test('unknown opcode refused; plain transfer accepted', async () => {
        const c = await setup();
        h.expectTx(await c.send(h.simpleBody(0x1234)), { to: c.address, exitCode: RERR.UNKNOWN_OP });
        h.expectTx(await c.stranger.send({ to: c.address, value: toNano('0.1') }), { to: c.address, success: true });
        assert.equal(await c.version(), 0);
    });
});
