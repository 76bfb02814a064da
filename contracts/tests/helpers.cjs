// Shared helpers for the contract tests (not a test file itself).
const assert = require('node:assert/strict');
const path = require('node:path');
const { Cell, beginCell, Address, contractAddress, toNano } = require('@ton/core');
const { internal } = require('@ton/sandbox');
const { keyPairFromSeed, sign } = require('@ton/crypto');
const { flattenTransaction } = require('@ton/test-utils');

const codeCache = {};
async function compile(name) {
    if (!codeCache[name]) {
        const { compileContract } = await import(path.join(__dirname, '..', 'build.mjs'));
        const c = await compileContract(name);
        codeCache[name] = Cell.fromBase64(c.codeBoc64);
    }
    return codeCache[name];
}

const OP = {
    TOP_UP: 0xc0c00101, REDEEM: 0xc0c00102, START_CLOSE: 0xc0c00103, FINISH_CLOSE: 0xc0c00104,
    COOP_CLOSE: 0xc0c00105, COMMIT: 0xc0c00106, WITHDRAW: 0xc0c00107,
    PAYOUT_REDEEM: 0xc0c00201, PAYOUT_WITHDRAW: 0xc0c00202, PAYOUT_CLOSE: 0xc0c00203, PAYOUT_COOP: 0xc0c00204,
};
const TAG = { CLIENT_VOUCHER: 0x43505631, WORKER_VOUCHER: 0x50575631, COOP_CLOSE: 0x43434c31, COMMIT: 0x434d5431 };
const ERR = {
    NOT_PAYER: 200, NOT_PAYEE: 201, BAD_SIGNATURE: 202, WRONG_CHANNEL: 203, VOUCHER_EXPIRED: 204,
    STALE_VOUCHER: 205, AMOUNT_DECREASED: 206, INSUFFICIENT_FUNDS: 207, CHANNEL_CLOSING: 208,
    NOT_CLOSING: 209, CLOSE_NOT_READY: 210, CLOSE_FINISHED: 211, LOW_VALUE: 212,
    WITHDRAW_INTO_STAKE: 213, STALE_COMMIT: 214, BAD_STAKE: 215, BAD_PAYEE_SIGNATURE: 216,
    UNKNOWN_OP: 0xffff,
};
const MAX_COINS = (1n << 120n) - 1n;

function keyPair(label) {
    const seed = Buffer.alloc(32);
    Buffer.from(label).copy(seed);
    return keyPairFromSeed(seed);
}

function voucherCell({ tag, channel, seqno, amount, expiry }) {
    return beginCell().storeUint(tag, 32).storeAddress(channel).storeUint(seqno, 64)
        .storeCoins(amount).storeUint(expiry, 32).endCell();
}
function coopCloseCell({ channel, seqno, payeeTotal, tag = TAG.COOP_CLOSE }) {
    return beginCell().storeUint(tag, 32).storeAddress(channel).storeUint(seqno, 64)
        .storeCoins(payeeTotal).endCell();
}
function signCell(cell, kp) {
    return sign(cell.hash(), kp.secretKey);
}
function redeemBody(voucher, signature, queryId = 0) {
    return beginCell().storeUint(OP.REDEEM, 32).storeUint(queryId, 64).storeBuffer(signature)
        .storeRef(voucher).endCell();
}
function coopCloseBody(close, payerSig, payeeSig, queryId = 0) {
    return beginCell().storeUint(OP.COOP_CLOSE, 32).storeUint(queryId, 64).storeBuffer(payerSig)
        .storeRef(close).storeRef(beginCell().storeBuffer(payeeSig).endCell()).endCell();
}
function simpleBody(op, queryId = 0) {
    return beginCell().storeUint(op, 32).storeUint(queryId, 64).endCell();
}

// Finds the transactions matching every given field of flattenTransaction().
function findTxs(txs, match) {
    return txs.map(flattenTransaction).filter((f) => Object.entries(match).every(([k, v]) => {
        const a = f[k];
        if (v instanceof Address) return a instanceof Address && a.equals(v);
        return a === v;
    }));
}
function expectTx(result, match) {
    const found = findTxs(result.transactions, match);
    assert.ok(found.length > 0, `no transaction matching ${JSON.stringify(match, (k, v) =>
        typeof v === 'bigint' ? v.toString() : (v instanceof Address ? v.toString() : v))}\n` +
        result.transactions.map(flattenTransaction).map((f) =>
            `  to=${f.to} op=${f.op} exit=${f.exitCode} success=${f.success} aborted=${f.aborted}`).join('\n'));
    return found[0];
}
function expectNoTx(result, match) {
    assert.equal(findTxs(result.transactions, match).length, 0, `unexpected transaction ${JSON.stringify(Object.keys(match))}`);
}

async function sendFrom(blockchain, from, to, value, body, bounce = true) {
    return blockchain.sendMessage(internal({ from, to, value, body, bounce }));
}

module.exports = {
    compile, OP, TAG, ERR, MAX_COINS, keyPair, voucherCell, coopCloseCell, signCell, redeemBody,
    coopCloseBody, simpleBody, findTxs, expectTx, expectNoTx, sendFrom, beginCell, Cell, Address,
    contractAddress, toNano,
};
