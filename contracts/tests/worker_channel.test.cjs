const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { Blockchain } = require('@ton/sandbox');
const h = require('./helpers.cjs');
const { OP, TAG, ERR, beginCell, toNano, contractAddress, Address } = h;

const NOW = 1_700_000_000;
const DELAY = 3600;

async function setup({ closeDelay = DELAY, workerAddr = null, deposit = toNano('10') } = {}) {
    const blockchain = await Blockchain.create();
    blockchain.now = NOW;
    const proxy = await blockchain.treasury('proxy');
    const worker = await blockchain.treasury('worker');
    const root = await blockchain.treasury('root');
    const stranger = await blockchain.treasury('stranger');
    const proxyKp = h.keyPair('proxy-key');
    const workerKp = h.keyPair('worker-key');
    const code = await h.compile('worker_channel');
    const wAddr = workerAddr ?? worker.address;
    const params = beginCell().storeAddress(root.address).storeAddress(proxy.address).storeAddress(wAddr)
        .storeUint(closeDelay, 32).endCell();
    const keys = beginCell().storeBuffer(proxyKp.publicKey).storeBuffer(workerKp.publicKey).endCell();
    const data = beginCell().storeRef(params).storeRef(keys).storeCoins(0).storeCoins(0)
        .storeUint(0, 64).storeUint(0, 32).storeUint(0, 64).storeUint(0, 256).endCell();
    const init = { code, data };
    const address = contractAddress(0, init);
    const deployRes = await proxy.send({ to: address, value: deposit, init, body: h.simpleBody(OP.TOP_UP, 1) });
    const ctx = { blockchain, proxy, worker, root, stranger, proxyKp, workerKp, address, wAddr, deployRes, closeDelay };
    ctx.state = async () => {
        const r = (await blockchain.runGetMethod(address, 'get_channel_state')).stackReader;
        return { balance: r.readBigNumber(), redeemed: r.readBigNumber(), seqno: r.readBigNumber(), closeAt: r.readBigNumber() };
    };
    ctx.voucher = (seqno, amount, { expiry = NOW + 86400, channel = address, tag = TAG.WORKER_VOUCHER, kp = proxyKp } = {}) => {
        const v = h.voucherCell({ tag, channel, seqno, amount, expiry });
        return h.redeemBody(v, h.signCell(v, kp), seqno);
    };
    ctx.redeem = (body, value = toNano('0.05'), from = worker) => from.send({ to: address, value, body });
    return ctx;
}

describe('worker channel (proxy -> worker)', () => {
    test('deploy by top-up credits value minus fee; getters', async () => {
        const c = await setup();
        h.expectTx(c.deployRes, { to: c.address, deploy: true, success: true });
        const s = await c.state();
        assert.equal(s.balance, toNano('10') - toNano('0.01'));
        assert.equal(s.redeemed, 0n);
        assert.equal(s.seqno, 0n);
        assert.equal(s.closeAt, 0n);
        const p = (await c.blockchain.runGetMethod(c.address, 'get_channel_params')).stackReader;
        assert.ok(p.readAddress().equals(c.root.address));
        assert.ok(p.readAddress().equals(c.proxy.address));
        assert.ok(p.readAddress().equals(c.worker.address));
        assert.equal(p.readBigNumber(), BigInt(DELAY));
        assert.equal(p.readBigNumber(), BigInt('0x' + c.proxyKp.publicKey.toString('hex')));
        assert.equal(p.readBigNumber(), BigInt('0x' + c.workerKp.publicKey.toString('hex')));
        const cm = (await c.blockchain.runGetMethod(c.address, 'get_commit')).stackReader;
        assert.equal(cm.readBigNumber(), 0n);
        assert.equal(cm.readBigNumber(), 0n);
    });

    test('top-up adds to balance; too small top-up refused', async () => {
        const c = await setup();
        await c.stranger.send({ to: c.address, value: toNano('1'), body: h.simpleBody(OP.TOP_UP) });
        assert.equal((await c.state()).balance, toNano('11') - toNano('0.02'));
        const r = await c.stranger.send({ to: c.address, value: toNano('0.005'), body: h.simpleBody(OP.TOP_UP) });
        h.expectTx(r, { to: c.address, exitCode: ERR.LOW_VALUE });
    });

    test('redeem pays the worker the voucher amount', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, toNano('2')));
        h.expectTx(r, { to: c.address, success: true });
        const pay = h.expectTx(r, { from: c.address, to: c.worker.address, op: OP.PAYOUT_REDEEM });
        assert.ok(pay.value >= toNano('2'));
        const s = await c.state();
        assert.equal(s.redeemed, toNano('2'));
        assert.equal(s.seqno, 1n);
        assert.equal(s.balance, toNano('8') - toNano('0.01'));
    });

    test('attack: redeeming the same voucher twice pays nothing', async () => {
        const c = await setup();
        const body = c.voucher(1, toNano('2'));
        await c.redeem(body);
        const r = await c.redeem(body);
        h.expectTx(r, { to: c.address, exitCode: ERR.STALE_VOUCHER });
        h.expectNoTx(r, { from: c.address, op: OP.PAYOUT_REDEEM });
        assert.equal((await c.state()).redeemed, toNano('2'));
    });

    test('newer voucher pays only the difference; older voucher refused', async () => {
        const c = await setup();
        const old = c.voucher(1, toNano('1'));
        await c.redeem(c.voucher(2, toNano('3')));
        const r2 = await c.redeem(c.voucher(3, toNano('4')));
        const pay = h.expectTx(r2, { from: c.address, to: c.worker.address, op: OP.PAYOUT_REDEEM });
        assert.ok(pay.value >= toNano('1') && pay.value < toNano('1.05'));
        const r = await c.redeem(old);
        h.expectTx(r, { to: c.address, exitCode: ERR.STALE_VOUCHER });
        assert.equal((await c.state()).redeemed, toNano('4'));
    });

    test('voucher with a higher seqno but lower amount refused', async () => {
        const c = await setup();
        await c.redeem(c.voucher(1, toNano('3')));
        const r = await c.redeem(c.voucher(2, toNano('2')));
        h.expectTx(r, { to: c.address, exitCode: ERR.AMOUNT_DECREASED });
    });

    test('attack: bad signature refused', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, toNano('1'), { kp: c.workerKp }));
        h.expectTx(r, { to: c.address, exitCode: ERR.BAD_SIGNATURE });
        // tampered amount after signing
        const v = h.voucherCell({ tag: TAG.WORKER_VOUCHER, channel: c.address, seqno: 1, amount: toNano('1'), expiry: NOW + 100 });
        const v2 = h.voucherCell({ tag: TAG.WORKER_VOUCHER, channel: c.address, seqno: 1, amount: toNano('5'), expiry: NOW + 100 });
        const r2 = await c.redeem(h.redeemBody(v2, h.signCell(v, c.proxyKp)));
        h.expectTx(r2, { to: c.address, exitCode: ERR.BAD_SIGNATURE });
    });

    test('attack: voucher for another channel or another voucher kind refused', async () => {
        const c = await setup();
        const other = Address.parse('0:' + '11'.repeat(32));
        const r = await c.redeem(c.voucher(1, toNano('1'), { channel: other }));
        h.expectTx(r, { to: c.address, exitCode: ERR.WRONG_CHANNEL });
        const r2 = await c.redeem(c.voucher(1, toNano('1'), { tag: TAG.CLIENT_VOUCHER }));
        h.expectTx(r2, { to: c.address, exitCode: ERR.WRONG_CHANNEL });
    });

    test('attack: expired voucher refused; valid up to and including expiry', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, toNano('1'), { expiry: NOW - 1 }));
        h.expectTx(r, { to: c.address, exitCode: ERR.VOUCHER_EXPIRED });
        const r2 = await c.redeem(c.voucher(1, toNano('1'), { expiry: NOW }));
        h.expectTx(r2, { to: c.address, success: true });
    });

    test('redeem only by the worker address and with enough gas', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, toNano('1')), toNano('0.05'), c.stranger);
        h.expectTx(r, { to: c.address, exitCode: ERR.NOT_PAYEE });
        const r2 = await c.redeem(c.voucher(1, toNano('1')), toNano('0.005'));
        h.expectTx(r2, { to: c.address, exitCode: ERR.LOW_VALUE });
    });

    test('integer edges: zero voucher, maximum coins, exact balance', async () => {
        const c = await setup();
        const r0 = await c.redeem(c.voucher(1, 0n));
        h.expectTx(r0, { to: c.address, success: true });
        assert.equal((await c.state()).seqno, 1n);
        const rMax = await c.redeem(c.voucher(2, h.MAX_COINS));
        h.expectTx(rMax, { to: c.address, exitCode: ERR.INSUFFICIENT_FUNDS });
        const bal = (await c.state()).balance;
        const rEx = await c.redeem(c.voucher(3, bal + 1n));
        h.expectTx(rEx, { to: c.address, exitCode: ERR.INSUFFICIENT_FUNDS });
        const rAll = await c.redeem(c.voucher(4, bal));
        h.expectTx(rAll, { to: c.address, success: true });
        assert.equal((await c.state()).balance, 0n);
    });

    test('close: only the proxy starts it; top-up and second start refused while closing', async () => {
        const c = await setup();
        const r = await c.worker.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.START_CLOSE) });
        h.expectTx(r, { to: c.address, exitCode: ERR.NOT_PAYER });
        const r2 = await c.proxy.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.START_CLOSE) });
        h.expectTx(r2, { to: c.address, success: true });
        assert.equal((await c.state()).closeAt, BigInt(NOW + DELAY));
        const r3 = await c.proxy.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.START_CLOSE) });
        h.expectTx(r3, { to: c.address, exitCode: ERR.CHANNEL_CLOSING });
        const r4 = await c.proxy.send({ to: c.address, value: toNano('1'), body: h.simpleBody(OP.TOP_UP) });
        h.expectTx(r4, { to: c.address, exitCode: ERR.CHANNEL_CLOSING });
    });

    test('race: worker redeems during the delay, not after; proxy takes the rest', async () => {
        const c = await setup();
        const newest = c.voucher(2, toNano('3'));
        await c.proxy.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.START_CLOSE) });
        const early = await c.stranger.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.FINISH_CLOSE) });
        h.expectTx(early, { to: c.address, exitCode: ERR.CLOSE_NOT_READY });
        c.blockchain.now = NOW + DELAY - 1;
        const r = await c.redeem(c.voucher(1, toNano('1'), { expiry: NOW + 10 * DELAY }));
        h.expectTx(r, { to: c.address, success: true });
        c.blockchain.now = NOW + DELAY;
        const late = await c.redeem(newest);
        h.expectTx(late, { to: c.address, exitCode: ERR.CLOSE_FINISHED });
        const fin = await c.stranger.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.FINISH_CLOSE) });
        const pay = h.expectTx(fin, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_CLOSE });
        assert.ok(pay.value > toNano('8.9'));
        assert.equal((await c.state()).balance, 0n);
        const contract = await c.blockchain.getContract(c.address);
        assert.ok(contract.balance >= toNano('0.009') && contract.balance <= toNano('0.011'));
    });

    test('finish close without a close refused', async () => {
        const c = await setup();
        const r = await c.proxy.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(OP.FINISH_CLOSE) });
        h.expectTx(r, { to: c.address, exitCode: ERR.NOT_CLOSING });
    });

    test('cooperative close signed by both finishes at once', async () => {
        const c = await setup();
        await c.redeem(c.voucher(1, toNano('1')));
        const cc = h.coopCloseCell({ channel: c.address, seqno: 2, payeeTotal: toNano('4') });
        const bad = await c.stranger.send({ to: c.address, value: toNano('0.05'),
            body: h.coopCloseBody(cc, h.signCell(cc, c.proxyKp), h.signCell(cc, c.proxyKp)) });
        h.expectTx(bad, { to: c.address, exitCode: ERR.BAD_PAYEE_SIGNATURE });
        const bad2 = await c.stranger.send({ to: c.address, value: toNano('0.05'),
            body: h.coopCloseBody(cc, h.signCell(cc, c.workerKp), h.signCell(cc, c.workerKp)) });
        h.expectTx(bad2, { to: c.address, exitCode: ERR.BAD_SIGNATURE });
        const r = await c.stranger.send({ to: c.address, value: toNano('0.05'),
            body: h.coopCloseBody(cc, h.signCell(cc, c.proxyKp), h.signCell(cc, c.workerKp)) });
        const pw = h.expectTx(r, { from: c.address, to: c.worker.address, op: OP.PAYOUT_COOP });
        assert.equal(pw.value, toNano('3'));
        const pp = h.expectTx(r, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_CLOSE });
        assert.ok(pp.value > toNano('5.9'));
        const s = await c.state();
        assert.equal(s.redeemed, toNano('4'));
        assert.equal(s.balance, 0n);
        const after = await c.redeem(c.voucher(3, toNano('5')));
        h.expectTx(after, { to: c.address, exitCode: ERR.CLOSE_FINISHED });
    });

    test('anti-rollback commit: monotonic sequence, proxy signature, this channel', async () => {
        const c = await setup();
        const commit = (seq, hash, { kp = c.proxyKp, channel = c.address } = {}) => {
            const st = beginCell().storeUint(TAG.COMMIT, 32).storeAddress(channel).storeUint(seq, 64).storeUint(hash, 256).endCell();
            return c.stranger.send({ to: c.address, value: toNano('0.05'), body: beginCell().storeUint(OP.COMMIT, 32)
                .storeUint(0, 64).storeBuffer(h.signCell(st, kp)).storeRef(st).endCell() });
        };
        h.expectTx(await commit(5, 0xabcn), { to: c.address, success: true });
        let cm = (await c.blockchain.runGetMethod(c.address, 'get_commit')).stackReader;
        assert.equal(cm.readBigNumber(), 5n);
        assert.equal(cm.readBigNumber(), 0xabcn);
        h.expectTx(await commit(5, 0xdefn), { to: c.address, exitCode: ERR.STALE_COMMIT });
        h.expectTx(await commit(4, 0xdefn), { to: c.address, exitCode: ERR.STALE_COMMIT });
        h.expectTx(await commit(6, 0xdefn, { kp: c.workerKp }), { to: c.address, exitCode: ERR.BAD_SIGNATURE });
        h.expectTx(await commit(6, 0xdefn, { channel: c.proxy.address }), { to: c.address, exitCode: ERR.WRONG_CHANNEL });
        h.expectTx(await commit(6, 0xdefn), { to: c.address, success: true });
        cm = (await c.blockchain.runGetMethod(c.address, 'get_commit')).stackReader;
        assert.equal(cm.readBigNumber(), 6n);
        assert.equal(cm.readBigNumber(), 0xdefn);
    });

    test('bounced redeem payout restores balance and debt', async () => {
        const ghost = Address.parse('0:' + '22'.repeat(32)); // no account: bounceable payouts bounce
        const c = await setup({ workerAddr: ghost });
        const before = await c.state();
        const r = await h.sendFrom(c.blockchain, ghost, c.address, toNano('0.05'), c.voucher(1, toNano('2')));
        h.expectTx(r, { to: c.address, success: true });
        h.expectTx(r, { from: ghost, to: c.address, inMessageBounced: true });
        const s = await c.state();
        assert.ok(s.balance > before.balance - toNano('0.05'));
        assert.ok(s.redeemed < toNano('0.05'));
        assert.equal(s.seqno, 1n);
    });

    test('bounced close payout returns to the balance; finish can be repeated', async () => {
        const c = await setup();
        // re-create with a proxy payout address that has no account
        const ghost = Address.parse('0:' + '66'.repeat(32));
        const code = await h.compile('worker_channel');
        const params = beginCell().storeAddress(c.root.address).storeAddress(ghost).storeAddress(c.worker.address)
            .storeUint(DELAY, 32).endCell();
        const keys = beginCell().storeBuffer(c.proxyKp.publicKey).storeBuffer(c.workerKp.publicKey).endCell();
        const data = beginCell().storeRef(params).storeRef(keys).storeCoins(0).storeCoins(0)
            .storeUint(0, 64).storeUint(0, 32).storeUint(0, 64).storeUint(0, 256).endCell();
        const init = { code, data };
        const addr = contractAddress(0, init);
        await c.stranger.send({ to: addr, value: toNano('5'), init, body: h.simpleBody(OP.TOP_UP) });
        h.expectTx(await h.sendFrom(c.blockchain, ghost, addr, toNano('0.05'), h.simpleBody(OP.START_CLOSE)), { to: addr, success: true });
        c.blockchain.now = NOW + DELAY;
        const fin = await c.stranger.send({ to: addr, value: toNano('0.05'), body: h.simpleBody(OP.FINISH_CLOSE) });
        h.expectTx(fin, { from: ghost, to: addr, inMessageBounced: true });
        const st = (await c.blockchain.runGetMethod(addr, 'get_channel_state')).stackReader;
        assert.ok(st.readBigNumber() > toNano('4.9'));
        const again = await c.stranger.send({ to: addr, value: toNano('0.05'), body: h.simpleBody(OP.FINISH_CLOSE) });
        h.expectTx(again, { to: addr, success: true });
    });

    test('the proxy cannot take funds back without a close (no withdraw op); excess returned on close/commit', async () => {
        const c = await setup();
        const r = await c.proxy.send({ to: c.address, value: toNano('0.05'),
            body: beginCell().storeUint(OP.WITHDRAW, 32).storeUint(0, 64).storeCoins(toNano('1')).endCell() });
        h.expectTx(r, { to: c.address, exitCode: ERR.UNKNOWN_OP });
        const sc = await c.proxy.send({ to: c.address, value: toNano('1'), body: h.simpleBody(OP.START_CLOSE, 42) });
        const ex = h.expectTx(sc, { from: c.address, to: c.proxy.address, op: 0xd53276db });
        assert.ok(ex.value > toNano('0.9'));
    });

    test('voucher test vector (same bytes as pytoniq-core begin_cell()...hash + PyNaCl sign)', async () => {
        const v = h.voucherCell({ tag: TAG.WORKER_VOUCHER, channel: Address.parse('0:' + '11'.repeat(32)), seqno: 7,
            amount: 123456789n, expiry: 1700086400 });
        assert.equal(v.hash().toString('hex'), '0ba1baa2f863b19d282ff22f3706fbf518ce9ed0ba9ece1625e1904bd13d1414');
        assert.equal(h.signCell(v, h.keyPair('proxy-key')).toString('hex'),
            '46abd554520e942010ea01ccc9eed47548d52717053ae35fb639ca162de4ab31' +
            '21d193cbfa2ac13424ce9c30b0ddbe2eef92a8f6cc0a65b1e8f0d4178e771706');
    });

    test('unknown opcode refused; empty transfer accepted', async () => {
        const c = await setup();
        const r = await c.stranger.send({ to: c.address, value: toNano('0.05'), body: h.simpleBody(0x12345678) });
        h.expectTx(r, { to: c.address, exitCode: ERR.UNKNOWN_OP });
        const r2 = await c.stranger.send({ to: c.address, value: toNano('0.05') });
        h.expectTx(r2, { to: c.address, success: true });
    });
});
