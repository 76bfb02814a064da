const { test, describe } = require('node:test');
const assert = require('node:assert/strict');
const { Blockchain } = require('@ton/sandbox');
const h = require('./helpers.cjs');
const { OP, TAG, ERR, beginCell, toNano, contractAddress, Address } = h;

const NOW = 1_700_000_000;
const DELAY = 600;

function topUpBody(stake, queryId = 0) {
    return beginCell().storeUint(OP.TOP_UP, 32).storeUint(queryId, 64).storeCoins(stake).endCell();
}
function withdrawBody(amount, queryId = 0) {
    return beginCell().storeUint(OP.WITHDRAW, 32).storeUint(queryId, 64).storeCoins(amount).endCell();
}

async function setup({ closeDelay = DELAY, clientAddr = null, proxyAddr = null, deposit = toNano('10'), stake = toNano('2') } = {}) {
    const blockchain = await Blockchain.create();
    blockchain.now = NOW;
    const client = await blockchain.treasury('client');
    const proxy = await blockchain.treasury('proxy');
    const root = await blockchain.treasury('root');
    const stranger = await blockchain.treasury('stranger');
    const clientKp = h.keyPair('client-key');
    const proxyKp = h.keyPair('proxy-key');
    const code = await h.compile('client_channel');
    const cAddr = clientAddr ?? client.address;
    const pAddr = proxyAddr ?? proxy.address;
    const params = beginCell().storeAddress(root.address).storeAddress(cAddr).storeAddress(pAddr)
        .storeUint(closeDelay, 32).endCell();
    const keys = beginCell().storeBuffer(clientKp.publicKey).storeBuffer(proxyKp.publicKey).endCell();
    const data = beginCell().storeRef(params).storeRef(keys).storeCoins(0).storeCoins(0).storeCoins(0)
        .storeUint(0, 64).storeUint(0, 32).endCell();
    const init = { code, data };
    const address = contractAddress(0, init);
    const deployRes = await client.send({ to: address, value: deposit, init, body: topUpBody(stake, 7) });
    const ctx = { blockchain, client, proxy, root, stranger, clientKp, proxyKp, address, deployRes };
    ctx.state = async () => {
        const r = (await blockchain.runGetMethod(address, 'get_channel_state')).stackReader;
        return { balance: r.readBigNumber(), stake: r.readBigNumber(), redeemed: r.readBigNumber(),
            seqno: r.readBigNumber(), closeAt: r.readBigNumber() };
    };
    ctx.voucher = (seqno, amount, { expiry = NOW + 86400, channel = address, tag = TAG.CLIENT_VOUCHER, kp = clientKp } = {}) => {
        const v = h.voucherCell({ tag, channel, seqno, amount, expiry });
        return h.redeemBody(v, h.signCell(v, kp), seqno);
    };
    ctx.redeem = (body, value = toNano('0.05'), from = proxy) => from.send({ to: address, value, body });
    ctx.withdraw = (amount, from = client, value = toNano('0.05')) => from.send({ to: address, value, body: withdrawBody(amount) });
    ctx.op = (op, from = client) => from.send({ to: address, value: toNano('0.05'), body: h.simpleBody(op) });
    return ctx;
}

describe('client channel (client -> proxy)', () => {
    test('deposit with stake; getters', async () => {
        const c = await setup();
        h.expectTx(c.deployRes, { to: c.address, deploy: true, success: true });
        const s = await c.state();
        assert.equal(s.balance, toNano('9.99'));
        assert.equal(s.stake, toNano('2'));
        assert.equal(s.redeemed, 0n);
        assert.equal(s.seqno, 0n);
        assert.equal(s.closeAt, 0n);
        const p = (await c.blockchain.runGetMethod(c.address, 'get_channel_params')).stackReader;
        assert.ok(p.readAddress().equals(c.root.address));
        assert.ok(p.readAddress().equals(c.client.address));
        assert.ok(p.readAddress().equals(c.proxy.address));
        assert.equal(p.readBigNumber(), BigInt(DELAY));
        assert.equal(p.readBigNumber(), BigInt('0x' + c.clientKp.publicKey.toString('hex')));
        assert.equal(p.readBigNumber(), BigInt('0x' + c.proxyKp.publicKey.toString('hex')));
    });

    test('top-up adds balance and stake; stake above the credited value refused', async () => {
        const c = await setup();
        await c.client.send({ to: c.address, value: toNano('1'), body: topUpBody(toNano('0.5')) });
        let s = await c.state();
        assert.equal(s.balance, toNano('10.98'));
        assert.equal(s.stake, toNano('2.5'));
        const r = await c.client.send({ to: c.address, value: toNano('1'), body: topUpBody(toNano('1')) });
        h.expectTx(r, { to: c.address, exitCode: ERR.BAD_STAKE });
        const r2 = await c.client.send({ to: c.address, value: toNano('0.01'), body: topUpBody(0n) });
        h.expectTx(r2, { to: c.address, exitCode: ERR.LOW_VALUE });
    });

    test('withdraw above the stake works; into the stake refused', async () => {
        const c = await setup();
        const free = toNano('9.99') - toNano('2');
        const bad = await c.withdraw(free + 1n);
        h.expectTx(bad, { to: c.address, exitCode: ERR.WITHDRAW_INTO_STAKE });
        const r = await c.withdraw(toNano('3'));
        const pay = h.expectTx(r, { from: c.address, to: c.client.address, op: OP.PAYOUT_WITHDRAW });
        assert.ok(pay.value >= toNano('3'));
        const r2 = await c.withdraw(free - toNano('3'));
        h.expectTx(r2, { to: c.address, success: true });
        const s = await c.state();
        assert.equal(s.balance, toNano('2'));
        const r3 = await c.withdraw(1n);
        h.expectTx(r3, { to: c.address, exitCode: ERR.WITHDRAW_INTO_STAKE });
    });

    test('withdraw only by the client, with enough gas; zero and maximum amounts', async () => {
        const c = await setup();
        h.expectTx(await c.withdraw(toNano('1'), c.proxy), { to: c.address, exitCode: ERR.NOT_PAYER });
        h.expectTx(await c.withdraw(toNano('1'), c.client, toNano('0.001')), { to: c.address, exitCode: ERR.LOW_VALUE });
        h.expectTx(await c.withdraw(0n), { to: c.address, success: true });
        h.expectTx(await c.withdraw(h.MAX_COINS), { to: c.address, exitCode: ERR.WITHDRAW_INTO_STAKE });
        assert.equal((await c.state()).balance, toNano('9.99'));
    });

    test('proxy redeems a voucher; the difference only on a newer one', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, toNano('1')));
        const pay = h.expectTx(r, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_REDEEM });
        assert.ok(pay.value >= toNano('1'));
        const r2 = await c.redeem(c.voucher(5, toNano('1.5')));
        const pay2 = h.expectTx(r2, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_REDEEM });
        assert.ok(pay2.value >= toNano('0.5') && pay2.value < toNano('0.55'));
        const s = await c.state();
        assert.equal(s.redeemed, toNano('1.5'));
        assert.equal(s.seqno, 5n);
        assert.equal(s.balance, toNano('8.49'));
    });

    test('attack: redeem twice / older voucher / lower amount', async () => {
        const c = await setup();
        const v1 = c.voucher(1, toNano('1'));
        const v2 = c.voucher(2, toNano('2'));
        await c.redeem(v2);
        h.expectTx(await c.redeem(v2), { to: c.address, exitCode: ERR.STALE_VOUCHER });
        h.expectTx(await c.redeem(v1), { to: c.address, exitCode: ERR.STALE_VOUCHER });
        h.expectTx(await c.redeem(c.voucher(3, toNano('1'))), { to: c.address, exitCode: ERR.AMOUNT_DECREASED });
        assert.equal((await c.state()).redeemed, toNano('2'));
    });

    test('attack: bad signature, another channel, worker voucher kind, expiry', async () => {
        const c = await setup();
        h.expectTx(await c.redeem(c.voucher(1, toNano('1'), { kp: c.proxyKp })), { to: c.address, exitCode: ERR.BAD_SIGNATURE });
        const other = Address.parse('0:' + '33'.repeat(32));
        h.expectTx(await c.redeem(c.voucher(1, toNano('1'), { channel: other })), { to: c.address, exitCode: ERR.WRONG_CHANNEL });
        h.expectTx(await c.redeem(c.voucher(1, toNano('1'), { tag: TAG.WORKER_VOUCHER })), { to: c.address, exitCode: ERR.WRONG_CHANNEL });
        h.expectTx(await c.redeem(c.voucher(1, toNano('1'), { expiry: NOW - 1 })), { to: c.address, exitCode: ERR.VOUCHER_EXPIRED });
        h.expectTx(await c.redeem(c.voucher(1, toNano('1')), toNano('0.05'), c.stranger), { to: c.address, exitCode: ERR.NOT_PAYEE });
        h.expectTx(await c.redeem(c.voucher(1, toNano('1')), toNano('0.001')), { to: c.address, exitCode: ERR.LOW_VALUE });
        assert.equal((await c.state()).redeemed, 0n);
    });

    test('redeem may consume the stake; stake never exceeds the balance', async () => {
        const c = await setup();
        await c.withdraw(toNano('7.99'));
        assert.equal((await c.state()).balance, toNano('2'));
        h.expectTx(await c.redeem(c.voucher(1, toNano('1.5'))), { to: c.address, success: true });
        const s = await c.state();
        assert.equal(s.balance, toNano('0.5'));
        assert.equal(s.stake, toNano('0.5'));
        h.expectTx(await c.redeem(c.voucher(2, h.MAX_COINS)), { to: c.address, exitCode: ERR.INSUFFICIENT_FUNDS });
        h.expectTx(await c.redeem(c.voucher(3, toNano('2'))), { to: c.address, success: true });
        assert.equal((await c.state()).balance, 0n);
    });

    test('race: proxy redeems during the close delay, not after; client takes the rest', async () => {
        const c = await setup();
        h.expectTx(await c.op(OP.START_CLOSE, c.proxy), { to: c.address, exitCode: ERR.NOT_PAYER });
        h.expectTx(await c.op(OP.FINISH_CLOSE), { to: c.address, exitCode: ERR.NOT_CLOSING });
        h.expectTx(await c.op(OP.START_CLOSE), { to: c.address, success: true });
        assert.equal((await c.state()).closeAt, BigInt(NOW + DELAY));
        h.expectTx(await c.op(OP.START_CLOSE), { to: c.address, exitCode: ERR.CHANNEL_CLOSING });
        h.expectTx(await c.client.send({ to: c.address, value: toNano('1'), body: topUpBody(0n) }), { to: c.address, exitCode: ERR.CHANNEL_CLOSING });
        h.expectTx(await c.op(OP.FINISH_CLOSE), { to: c.address, exitCode: ERR.CLOSE_NOT_READY });
        c.blockchain.now = NOW + DELAY - 1;
        h.expectTx(await c.redeem(c.voucher(1, toNano('1'))), { to: c.address, success: true });
        c.blockchain.now = NOW + DELAY;
        h.expectTx(await c.redeem(c.voucher(2, toNano('2'))), { to: c.address, exitCode: ERR.CLOSE_FINISHED });
        h.expectTx(await c.withdraw(toNano('1')), { to: c.address, exitCode: ERR.CLOSE_FINISHED });
        const fin = await c.op(OP.FINISH_CLOSE, c.stranger);
        const pay = h.expectTx(fin, { from: c.address, to: c.client.address, op: OP.PAYOUT_CLOSE });
        assert.ok(pay.value > toNano('8.9'));
        const s = await c.state();
        assert.equal(s.balance, 0n);
        assert.equal(s.stake, 0n);
    });

    test('client may withdraw above the stake during the delay', async () => {
        const c = await setup();
        await c.op(OP.START_CLOSE);
        h.expectTx(await c.withdraw(toNano('1')), { to: c.address, success: true });
        assert.equal((await c.state()).balance, toNano('8.99'));
    });

    test('cooperative close pays both sides at once', async () => {
        const c = await setup();
        await c.redeem(c.voucher(1, toNano('1')));
        const cc = h.coopCloseCell({ channel: c.address, seqno: 2, payeeTotal: toNano('3') });
        const send = (a, b) => c.stranger.send({ to: c.address, value: toNano('0.05'), body: h.coopCloseBody(cc, a, b) });
        h.expectTx(await send(h.signCell(cc, c.proxyKp), h.signCell(cc, c.proxyKp)), { to: c.address, exitCode: ERR.BAD_SIGNATURE });
        h.expectTx(await send(h.signCell(cc, c.clientKp), h.signCell(cc, c.clientKp)), { to: c.address, exitCode: ERR.BAD_PAYEE_SIGNATURE });
        const other = h.coopCloseCell({ channel: c.proxy.address, seqno: 2, payeeTotal: toNano('3') });
        h.expectTx(await c.stranger.send({ to: c.address, value: toNano('0.05'),
            body: h.coopCloseBody(other, h.signCell(other, c.clientKp), h.signCell(other, c.proxyKp)) }), { to: c.address, exitCode: ERR.WRONG_CHANNEL });
        const stale = h.coopCloseCell({ channel: c.address, seqno: 1, payeeTotal: toNano('3') });
        h.expectTx(await c.stranger.send({ to: c.address, value: toNano('0.05'),
            body: h.coopCloseBody(stale, h.signCell(stale, c.clientKp), h.signCell(stale, c.proxyKp)) }), { to: c.address, exitCode: ERR.STALE_VOUCHER });
        const r = await send(h.signCell(cc, c.clientKp), h.signCell(cc, c.proxyKp));
        const pp = h.expectTx(r, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_COOP });
        assert.equal(pp.value, toNano('2'));
        const pc = h.expectTx(r, { from: c.address, to: c.client.address, op: OP.PAYOUT_CLOSE });
        assert.ok(pc.value > toNano('6.9'));
        const s = await c.state();
        assert.equal(s.redeemed, toNano('3'));
        assert.equal(s.balance, 0n);
        assert.equal(s.closeAt, BigInt(NOW));
        h.expectTx(await c.redeem(c.voucher(3, toNano('4'))), { to: c.address, exitCode: ERR.CLOSE_FINISHED });
        h.expectTx(await send(h.signCell(cc, c.clientKp), h.signCell(cc, c.proxyKp)), { to: c.address, exitCode: ERR.CLOSE_FINISHED });
    });

    test('cooperative close above the balance refused', async () => {
        const c = await setup();
        const cc = h.coopCloseCell({ channel: c.address, seqno: 1, payeeTotal: h.MAX_COINS });
        const r = await c.stranger.send({ to: c.address, value: toNano('0.05'),
            body: h.coopCloseBody(cc, h.signCell(cc, c.clientKp), h.signCell(cc, c.proxyKp)) });
        h.expectTx(r, { to: c.address, exitCode: ERR.INSUFFICIENT_FUNDS });
    });

    test('bounced withdraw payout returns to the balance', async () => {
        const ghost = Address.parse('0:' + '44'.repeat(32));
        const c = await setup({ clientAddr: ghost });
        const r = await h.sendFrom(c.blockchain, ghost, c.address, toNano('0.05'), withdrawBody(toNano('3')));
        h.expectTx(r, { to: c.address, success: true });
        h.expectTx(r, { from: ghost, to: c.address, inMessageBounced: true });
        const s = await c.state();
        assert.ok(s.balance > toNano('9.99'));   // 3 TON plus the unused gas came back
        assert.equal(s.stake, toNano('2'));
    });

    test('bounced redeem payout restores the debt', async () => {
        const ghost = Address.parse('0:' + '55'.repeat(32));
        const c = await setup({ proxyAddr: ghost });
        const r = await h.sendFrom(c.blockchain, ghost, c.address, toNano('0.05'), c.voucher(1, toNano('3')));
        h.expectTx(r, { from: ghost, to: c.address, inMessageBounced: true });
        const s = await c.state();
        assert.ok(s.balance > toNano('9.99') - toNano('0.05'));
        assert.ok(s.redeemed < toNano('0.05'));
    });

    test('attack: voucher of one client channel replayed on another channel of the same keys', async () => {
        const c = await setup();
        const d = await setup({ proxyAddr: c.stranger.address }); // same keys, other payout address -> other channel
        assert.ok(!c.address.equals(d.address));
        const v = c.voucher(1, toNano('1'));
        const r = await d.blockchain.sendMessage(require('@ton/sandbox').internal({ from: d.stranger.address, to: d.address, value: toNano('0.05'), body: v }));
        h.expectTx(r, { to: d.address, exitCode: ERR.WRONG_CHANNEL });
    });

    test('redeem of a zero voucher pays nothing but advances the seqno', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, 0n));
        const pay = h.expectTx(r, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_REDEEM });
        assert.ok(pay.value < toNano('0.05'));
        const s = await c.state();
        assert.equal(s.seqno, 1n);
        assert.equal(s.balance, toNano('9.99'));
    });

    test('minimum values suffice: 0.01 TON for redeem and withdraw, 0.02 TON deposit', async () => {
        const c = await setup();
        const r = await c.redeem(c.voucher(1, toNano('1')), toNano('0.01'));
        h.expectTx(r, { to: c.address, success: true });
        h.expectTx(r, { from: c.address, to: c.proxy.address, op: OP.PAYOUT_REDEEM, success: true });
        const w = await c.withdraw(toNano('1'), c.client, toNano('0.01'));
        h.expectTx(w, { from: c.address, to: c.client.address, op: OP.PAYOUT_WITHDRAW, success: true });
        h.expectTx(await c.stranger.send({ to: c.address, value: toNano('0.02'), body: topUpBody(0n) }), { to: c.address, success: true });
        const s = await c.state();
        assert.equal(s.balance, toNano('9.99') - toNano('2') + toNano('0.01'));
        const contract = await c.blockchain.getContract(c.address);
        assert.ok(contract.balance >= s.balance, 'real balance covers the logical balance');
    });

    test('unknown opcode refused; plain transfer accepted', async () => {
        const c = await setup();
        h.expectTx(await c.op(0x0badf00d), { to: c.address, exitCode: ERR.UNKNOWN_OP });
        h.expectTx(await c.stranger.send({ to: c.address, value: toNano('0.05') }), { to: c.address, success: true });
    });
});
