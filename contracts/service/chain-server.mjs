#!/usr/bin/env node
// Local chain service: runs the Cocoon TON contracts in @ton/sandbox behind a small HTTP/JSON API
// and persists the chain state to a file. See contracts/README.md, "Local chain service".
//
//   node contracts/service/chain-server.mjs --state FILE [--host 127.0.0.1] [--port 0] [--faucet-seed cocoon-faucet]
//
// Requests are executed strictly one at a time; every successful mutating request (send, faucet,
// time) is written to FILE atomically before the response is sent.

import http from 'node:http';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import crypto from 'node:crypto';
import sandbox from '@ton/sandbox';
import core from '@ton/core';

const { Blockchain, GetMethodError, EmulationError, snapshotToSerializable, snapshotFromSerializable } = sandbox;
const { Address, Cell, loadMessage } = core;

const STATE_FORMAT = 'cocoon-chain-state';
const STATE_VERSION = 1;
const MAX_BODY = 1024 * 1024;                    // request body limit (bytes)
const MAX_DISCARD = 64 * 1024 * 1024;            // an oversized body is drained up to this, then the socket is dropped
const NANO = 1_000_000_000n;
const FAUCET_BALANCE = 1_000_000_000n * NANO;    // 10^9 TON
const FAUCET_FLOOR = 10_000_000n * NANO;         // refilled to FAUCET_BALANCE when it falls below 10^7 TON
const FAUCET_MAX_AMOUNT = 1_000_000n * NANO;     // 10^15 nanoTON per faucet request
const INT257_MIN = -(1n << 256n);
const INT257_MAX = (1n << 256n) - 1n;
const MAX_STACK_ITEMS = 255;
const MAX_TUPLE_DEPTH = 16;
const MAX_UNIX_TIME = 0xffffffff;
const QUIET = { print: false, blockchainLogs: false, vmLogs: 'none', debugLogs: false };
const EXIT_CODE_NOT_ACTIVE = -256;

// ---------------------------------------------------------------------------------------------
// command line

function usage() {
    return 'usage: chain-server.mjs --state FILE [--host 127.0.0.1] [--port 0] [--faucet-seed cocoon-faucet]';
}

function fail(message, code = 2) {
    process.stderr.write(`chain-server: ${String(message).replace(/\s+/g, ' ').trim()}\n`);
    process.exit(code);
}

function parseArgs(argv) {
    const opts = { state: null, host: '127.0.0.1', port: 0, faucetSeed: 'cocoon-faucet' };
    const names = { '--state': 'state', '--host': 'host', '--port': 'port', '--faucet-seed': 'faucetSeed' };
    const seen = new Set();
    for (let i = 0; i < argv.length; i++) {
        let arg = argv[i];
        if (arg === '--help' || arg === '-h') {
            process.stdout.write(usage() + '\n');
            process.exit(0);
        }
        let value;
        const eq = arg.indexOf('=');
        if (arg.startsWith('--') && eq > 0) {
            value = arg.slice(eq + 1);
            arg = arg.slice(0, eq);
        }
        const key = names[arg];
        if (key === undefined) fail(`unknown argument ${JSON.stringify(argv[i])}; ${usage()}`);
        if (seen.has(key)) fail(`${arg} given twice`);
        seen.add(key);
        if (value === undefined) {
            if (i + 1 >= argv.length) fail(`${arg} needs a value`);
            value = argv[++i];
        }
        if (key === 'port') {
            if (!/^[0-9]{1,5}$/.test(value) || Number(value) > 65535) fail(`--port must be an integer 0..65535, got ${JSON.stringify(value)}`);
            opts.port = Number(value);
        } else {
            if (value === '') fail(`${arg} must not be empty`);
            opts[key] = value;
        }
    }
    if (opts.state === null) fail(`--state FILE is required; ${usage()}`);
    return opts;
}

// ---------------------------------------------------------------------------------------------
// errors and validation

class ApiError extends Error {
    constructor(status, code, message) {
        super(message);
        this.status = status;
        this.code = code;
    }
}
const badField = (field, what) => new ApiError(400, 'invalid_field', `${field}: ${what}`);
const oneLine = (s) => String(s).split('\n').map((l) => l.trim()).filter((l) => l.length > 0)[0] ?? '';

function describe(v) {
    if (v === null) return 'null';
    if (Array.isArray(v)) return 'an array';
    if (typeof v === 'string') return v.length > 40 ? `a string of length ${v.length}` : `the string ${JSON.stringify(v)}`;
    return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

function checkFields(body, required, optional = []) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        throw new ApiError(400, 'invalid_json', 'request body must be a JSON object');
    }
    for (const k of Object.keys(body)) {
        if (!required.includes(k) && !optional.includes(k)) {
            throw new ApiError(400, 'unknown_field', `unknown field ${JSON.stringify(k)} (allowed: ${[...required, ...optional].join(', ')})`);
        }
    }
    for (const k of required) {
        if (!(k in body)) throw new ApiError(400, 'missing_field', `missing field ${JSON.stringify(k)}`);
    }
}

// A decimal string or a JSON number that is a safe integer -> bigint.
function parseBigInt(v, field, { min, max, signed }) {
    let n;
    if (typeof v === 'number') {
        if (!Number.isSafeInteger(v)) throw badField(field, `must be an integer (a decimal string for big values), got ${describe(v)}`);
        n = BigInt(v);
    } else if (typeof v === 'string') {
        const re = signed ? /^-?(0|[1-9][0-9]*)$/ : /^(0|[1-9][0-9]*)$/;
        if (v.length > 90 || !re.test(v)) throw badField(field, `must be a decimal integer string, got ${describe(v)}`);
        n = BigInt(v);
    } else {
        throw badField(field, `must be a decimal integer string, got ${describe(v)}`);
    }
    if ((min !== undefined && n < min) || (max !== undefined && n > max)) {
        throw badField(field, `must be in ${min}..${max}, got ${n}`);
    }
    return n;
}

function parseAddress(v, field) {
    if (typeof v !== 'string') throw badField(field, `must be an address string, got ${describe(v)}`);
    const raw = /^(-1|0):([0-9a-fA-F]{64})$/.exec(v);
    if (raw) return new Address(Number(raw[1]), Buffer.from(raw[2], 'hex'));
    if (v.length === 48 && /^[A-Za-z0-9+/_-]+$/.test(v)) {
        let parsed;
        try {
            parsed = Address.parseFriendly(v).address;
        } catch (e) {
            throw badField(field, `invalid user-friendly address (${oneLine(e?.message ?? e)})`);
        }
        if (parsed.workChain !== 0 && parsed.workChain !== -1) throw badField(field, `workchain must be 0 or -1, got ${parsed.workChain}`);
        return parsed;
    }
    throw badField(field, `must be a raw address "0:<64 hex>" (or "-1:...") or a 48-character user-friendly address, got ${describe(v)}`);
}

function parseBase64(v, field) {
    if (typeof v !== 'string' || v.length === 0) throw badField(field, `must be a non-empty base64 string, got ${describe(v)}`);
    const std = v.replace(/-/g, '+').replace(/_/g, '/');
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(std) || (std.includes('=') && std.length % 4 !== 0) || std.replace(/=+$/, '').length % 4 === 1) {
        throw badField(field, 'is not valid base64');
    }
    const buf = Buffer.from(std, 'base64');
    if (buf.toString('base64').replace(/=+$/, '') !== std.replace(/=+$/, '')) throw badField(field, 'is not valid base64 (non-zero padding bits)');
    return buf;
}

function parseBoc(v, field) {
    const buf = parseBase64(v, field);
    let roots;
    try {
        roots = Cell.fromBoc(buf);
    } catch (e) {
        throw badField(field, `is not a valid BoC (${oneLine(e?.message ?? e)})`);
    }
    if (roots.length !== 1) throw badField(field, `BoC must have exactly one root cell, has ${roots.length}`);
    return roots[0];
}

const cellToB64 = (c) => c.toBoc().toString('base64');

// JSON stack item -> @ton/core TupleItem
function stackItemFromJson(item, field, depth, counter) {
    if (++counter.n > 1024) throw badField(field, 'too many stack items in total (max 1024)');
    if (item === null || typeof item !== 'object' || Array.isArray(item)) throw badField(field, `must be an object {"type": ...}, got ${describe(item)}`);
    const only = (...keys) => {
        for (const k of Object.keys(item)) {
            if (k !== 'type' && !keys.includes(k)) throw badField(field, `unknown key ${JSON.stringify(k)} for type ${item.type}`);
        }
        for (const k of keys) if (!(k in item)) throw badField(field, `missing key ${JSON.stringify(k)} for type ${item.type}`);
    };
    switch (item.type) {
    case 'int':
        only('value');
        return { type: 'int', value: parseBigInt(item.value, `${field}.value`, { min: INT257_MIN, max: INT257_MAX, signed: true }) };
    case 'null':
        only();
        return { type: 'null' };
    case 'nan':
        only();
        return { type: 'nan' };
    case 'cell':
    case 'slice':
    case 'builder':
        only('boc');
        return { type: item.type, cell: parseBoc(item.boc, `${field}.boc`) };
    case 'tuple': {
        only('items');
        if (!Array.isArray(item.items)) throw badField(`${field}.items`, `must be an array, got ${describe(item.items)}`);
        if (item.items.length > MAX_STACK_ITEMS) throw badField(`${field}.items`, `at most ${MAX_STACK_ITEMS} items`);
        if (depth >= MAX_TUPLE_DEPTH) throw badField(field, `tuples nested deeper than ${MAX_TUPLE_DEPTH}`);
        return { type: 'tuple', items: item.items.map((x, i) => stackItemFromJson(x, `${field}.items[${i}]`, depth + 1, counter)) };
    }
    default:
        throw badField(`${field}.type`, `must be one of int, null, nan, cell, slice, builder, tuple, got ${describe(item.type)}`);
    }
}

// @ton/core TupleItem -> JSON stack item
function stackItemToJson(item) {
    switch (item.type) {
    case 'int': return { type: 'int', value: item.value.toString() };
    case 'null': return { type: 'null' };
    case 'nan': return { type: 'nan' };
    case 'cell':
    case 'slice':
    case 'builder': return { type: item.type, boc: cellToB64(item.cell) };
    case 'tuple': return { type: 'tuple', items: item.items.map(stackItemToJson) };
    default: throw new Error(`unsupported stack item type ${item.type}`);
    }
}

function txToJson(tx) {
    const d = tx.description;
    const info = tx.inMessage?.info;
    let address;
    if (info && (info.type === 'internal' || info.type === 'external-in')) {
        address = info.dest.toRawString();
    } else {
        address = '0:' + tx.address.toString(16).padStart(64, '0');
    }
    let success = false, aborted = false, exitCode = null, actionResultCode = null;
    if (d.type === 'generic' || d.type === 'tick-tock' || d.type === 'split-prepare' || d.type === 'merge-install') {
        const cp = d.computePhase;
        const ap = d.actionPhase;
        aborted = Boolean(d.aborted);
        if (cp && cp.type === 'vm') exitCode = cp.exitCode;
        if (ap) actionResultCode = ap.resultCode;
        success = Boolean(cp && cp.type === 'vm' && cp.success && (!ap || ap.success));
    }
    let inOp = null;
    const body = tx.inMessage?.body;
    if (body && body.bits.length >= 32) inOp = body.beginParse().loadUint(32);
    return {
        address,
        lt: tx.lt.toString(),
        success,
        aborted,
        exit_code: exitCode,
        action_result_code: actionResultCode,
        in_op: inOp,
        bounced: Boolean(info && info.type === 'internal' && info.bounced),
        out_messages: tx.outMessagesCount,
    };
}

// ---------------------------------------------------------------------------------------------
// chain state

// The sandbox answers every unknown address with a placeholder (uninit, zero balance); on TON such
// an account does not exist (an uninit account with nothing on it is deleted).
function isNonexistent(shard) {
    const acc = shard.account;
    if (!acc) return true;
    const bal = acc.storage.balance;
    return acc.storage.state.type === 'uninit' && bal.coins === 0n && (!bal.other || bal.other.size === 0);
}
// A placeholder that never had a transaction: not worth keeping in the state file.
const isEmptyRecord = (shard) => isNonexistent(shard) && shard.lastTransactionLt === 0n;

class Chain {
    constructor(file, faucetSeed) {
        this.file = path.resolve(file);
        this.faucetSeed = faucetSeed;
        this.blockchain = null;
        this.faucet = null;
        this.fixedNow = null;   // fixed clock, or null for wall-clock time
        this.lastNow = 0;       // the latest time the chain used for a transaction or was fixed to
    }

    wallNow() {
        return Math.floor(Date.now() / 1000);
    }

    // Wall-clock time never goes below a time the chain already used (an account's last
    // transaction time must not be in its future, and contracts see a monotonic clock).
    effectiveNow() {
        return this.fixedNow ?? Math.max(this.wallNow(), this.lastNow);
    }

    quiet() {
        this.blockchain.verbosity = { ...QUIET };
    }

    async init() {
        let saved = null;
        let text = null;
        try {
            text = await fsp.readFile(this.file, 'utf8');
        } catch (e) {
            if (e.code !== 'ENOENT') throw Object.assign(new Error(e.message), { loadError: true });
        }
        if (text !== null) {
            try {
                saved = JSON.parse(text);
            } catch (e) {
                throw Object.assign(new Error(oneLine(e?.message ?? e)), { loadError: true });
            }
        }
        this.blockchain = await Blockchain.create();
        this.quiet();
        if (text !== null) {
            try {
                if (saved === null || typeof saved !== 'object' || saved.format !== STATE_FORMAT) throw new Error(`not a ${STATE_FORMAT} file`);
                if (saved.version !== STATE_VERSION) throw new Error(`unsupported state version ${JSON.stringify(saved.version)}`);
                const clock = saved.clock;
                if (!clock || typeof clock !== 'object') throw new Error('missing clock');
                if (clock.fixed_now !== null && !Number.isSafeInteger(clock.fixed_now)) throw new Error('bad clock.fixed_now');
                if (!Number.isSafeInteger(clock.last_now)) throw new Error('bad clock.last_now');
                if (!saved.snapshot || typeof saved.snapshot !== 'object' || !Array.isArray(saved.snapshot.contracts)) throw new Error('missing snapshot');
                await this.blockchain.loadFrom(snapshotFromSerializable(saved.snapshot));
                this.fixedNow = clock.fixed_now;
                this.lastNow = clock.last_now;
            } catch (e) {
                throw Object.assign(new Error(oneLine(e?.message ?? e)), { loadError: true });
            }
            this.quiet();
        }
        this.blockchain.now = this.effectiveNow();
        // For a loaded chain the treasury already exists (active, non-zero balance): treasury() then
        // only re-opens it and keeps its balance. A fresh chain deploys it here.
        this.faucet = await this.blockchain.treasury(this.faucetSeed, { balance: FAUCET_BALANCE });
        this.lastNow = Math.max(this.lastNow, this.blockchain.now);
        await this.refillFaucet();
        this.blockchain.transactions = [];
    }

    async faucetContract() {
        return this.blockchain.getContract(this.faucet.address);
    }

    async refillFaucet() {
        const c = await this.faucetContract();
        if (c.balance < FAUCET_FLOOR) c.balance = FAUCET_BALANCE;
    }

    serialize() {
        const snap = this.blockchain.snapshot();
        snap.transactions = [];                                              // history is not kept
        snap.contracts = snap.contracts.filter((c) => !isEmptyRecord(c.account));   // drop untouched placeholder accounts
        return JSON.stringify({
            format: STATE_FORMAT,
            version: STATE_VERSION,
            faucet: { seed: this.faucetSeed, address: this.faucet.address.toRawString() },
            clock: { fixed_now: this.fixedNow, last_now: this.lastNow },
            snapshot: snapshotToSerializable(snap),
        });
    }

    async save() {
        const data = this.serialize();
        const dir = path.dirname(this.file);
        await fsp.mkdir(dir, { recursive: true });
        const tmp = path.join(dir, `.${path.basename(this.file)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`);
        let fh;
        try {
            fh = await fsp.open(tmp, 'wx', 0o600);
            await fh.writeFile(data, 'utf8');
            await fh.sync();
            await fh.close();
            fh = undefined;
            await fsp.rename(tmp, this.file);
        } catch (e) {
            if (fh) await fh.close().catch(() => {});
            await fsp.unlink(tmp).catch(() => {});
            throw e;
        }
        try {                                   // make the rename durable
            const dh = await fsp.open(dir, 'r');
            try { await dh.sync(); } finally { await dh.close(); }
        } catch { /* not supported on every platform */ }
    }

    // Runs a state-changing operation; on any failure (including saving) the chain is restored
    // to its state before the operation, so memory and the state file always agree.
    async mutate(fn) {
        const before = this.blockchain.snapshot();
        const clock = { fixedNow: this.fixedNow, lastNow: this.lastNow };
        try {
            const result = await fn();
            try {
                await this.save();
            } catch (e) {
                throw new ApiError(500, 'state_save_failed', `cannot save state ${this.file}: ${oneLine(e?.message ?? e)}`);
            }
            return result;
        } catch (e) {
            const queue = this.blockchain.defaultQueueManager?.messageQueue;
            if (Array.isArray(queue)) queue.length = 0;    // drop messages left over from an aborted chain
            await this.blockchain.loadFrom(before);
            this.quiet();
            this.fixedNow = clock.fixedNow;
            this.lastNow = clock.lastNow;
            throw e;
        } finally {
            this.blockchain.transactions = [];             // keep memory bounded: no transaction history
        }
    }

    async runMessage(send) {
        const now = this.effectiveNow();
        this.blockchain.now = now;
        const res = await send();
        this.lastNow = Math.max(this.lastNow, now);
        return { transactions: res.transactions.map(txToJson) };
    }

    // ---- API operations ----

    async status() {
        return {
            now: this.effectiveNow(),
            faucet: this.faucet.address.toRawString(),
            faucet_balance: (await this.faucetContract()).balance.toString(),
            fixed_now: this.fixedNow,
        };
    }

    async send(body) {
        checkFields(body, ['boc']);
        const cell = parseBoc(body.boc, 'boc');
        let msg;
        try {
            const s = cell.beginParse();
            msg = loadMessage(s);
        } catch (e) {
            throw badField('boc', `is not a Message cell (${oneLine(e?.message ?? e)})`);
        }
        if (msg.info.type !== 'external-in') throw badField('boc', `message must be external-in, got ${msg.info.type}`);
        const wc = msg.info.dest.workChain;
        if (wc !== 0 && wc !== -1) throw badField('boc', `destination workchain must be 0 or -1, got ${wc}`);
        return this.mutate(async () => {
            try {
                return await this.runMessage(() => this.blockchain.sendMessage(msg));
            } catch (e) {
                if (e instanceof EmulationError) {
                    const code = e.exitCode !== undefined ? ` (exit code ${e.exitCode})` : '';
                    throw new ApiError(409, 'external_not_accepted', `${oneLine(e.error ?? e.message)}${code}`);
                }
                throw e;
            }
        });
    }

    async faucetSend(body) {
        checkFields(body, ['address', 'amount'], ['bounce']);
        const to = parseAddress(body.address, 'address');
        const amount = parseBigInt(body.amount, 'amount', { min: 1n, max: FAUCET_MAX_AMOUNT });
        const bounce = body.bounce ?? false;
        if (typeof bounce !== 'boolean') throw badField('bounce', `must be true or false, got ${describe(bounce)}`);
        return this.mutate(async () => {
            await this.refillFaucet();
            return this.runMessage(() => this.faucet.send({ to, value: amount, bounce }));
        });
    }

    async get(body) {
        checkFields(body, ['address', 'method'], ['stack']);
        const address = parseAddress(body.address, 'address');
        const method = body.method;
        if (typeof method !== 'string' || !/^[A-Za-z0-9_]{1,128}$/.test(method)) {
            throw badField('method', `must be 1..128 characters [A-Za-z0-9_], got ${describe(method)}`);
        }
        const stackJson = body.stack ?? [];
        if (!Array.isArray(stackJson)) throw badField('stack', `must be an array, got ${describe(stackJson)}`);
        if (stackJson.length > MAX_STACK_ITEMS) throw badField('stack', `at most ${MAX_STACK_ITEMS} items`);
        const counter = { n: 0 };
        const stack = stackJson.map((x, i) => stackItemFromJson(x, `stack[${i}]`, 0, counter));
        const contract = await this.blockchain.getContract(address);
        if (contract.accountState?.type !== 'active') return { exit_code: EXIT_CODE_NOT_ACTIVE, stack: [] };
        this.blockchain.now = this.effectiveNow();
        let res;
        try {
            res = await this.blockchain.runGetMethod(address, method, stack);
        } catch (e) {
            if (e instanceof GetMethodError) return { exit_code: e.exitCode, stack: [] };
            throw e;
        }
        return { exit_code: res.exitCode, stack: res.stack.map(stackItemToJson) };
    }

    async account(body) {
        checkFields(body, ['address']);
        const address = parseAddress(body.address, 'address');
        const shard = (await this.blockchain.getContract(address)).account;
        const acc = shard.account;
        if (isNonexistent(shard)) {
            return { address: address.toRawString(), status: 'nonexist', balance: '0', code_hash: null, data_hash: null, last_lt: null };
        }
        const st = acc.storage.state;
        const active = st.type === 'active';
        return {
            address: address.toRawString(),
            status: st.type,
            balance: acc.storage.balance.coins.toString(),
            code_hash: active && st.state.code ? st.state.code.hash().toString('hex') : null,
            data_hash: active && st.state.data ? st.state.data.hash().toString('hex') : null,
            last_lt: shard.lastTransactionLt.toString(),
        };
    }

    async time(body) {
        checkFields(body, ['now']);
        let now = null;
        if (body.now !== null) {
            now = Number(parseBigInt(body.now, 'now', { min: 0n, max: BigInt(MAX_UNIX_TIME) }));
            const floor = Math.max(this.fixedNow ?? 0, this.lastNow);
            if (now < floor) {
                throw new ApiError(400, 'time_goes_backwards', `now ${now} is earlier than the chain time ${floor} (time never goes backwards)`);
            }
        }
        return this.mutate(async () => {
            this.fixedNow = now;
            if (now !== null) this.lastNow = Math.max(this.lastNow, now);
            return { now: this.effectiveNow() };
        });
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

function sendJson(res, status, obj, extraHeaders = {}) {
    const data = Buffer.from(JSON.stringify(obj));
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length, ...extraHeaders });
    res.end(data);
}

function sendError(res, err, extraHeaders) {
    sendJson(res, err.status, { error: { code: err.code, message: oneLine(err.message) } }, extraHeaders);
}

// Reads the body; an oversized one is drained (so the client sees the 413) up to MAX_DISCARD.
function readBody(req) {
    return new Promise((resolve, reject) => {
        const declared = Number(req.headers['content-length']);
        if (Number.isFinite(declared) && declared > MAX_DISCARD) {
            reject(new ApiError(413, 'payload_too_large', `request body is larger than ${MAX_BODY} bytes`));
            return;
        }
        const chunks = [];
        let size = 0;
        req.on('data', (chunk) => {
            size += chunk.length;
            if (size <= MAX_BODY) chunks.push(chunk);
            else if (size > MAX_DISCARD) req.destroy();
        });
        req.on('end', () => {
            if (size > MAX_BODY) reject(new ApiError(413, 'payload_too_large', `request body is larger than ${MAX_BODY} bytes`));
            else resolve(Buffer.concat(chunks));
        });
        req.on('error', reject);
        req.on('aborted', () => reject(new Error('request aborted')));
    });
}

const ROUTES = {
    '/v1/status': { method: 'GET', op: 'status' },
    '/v1/send': { method: 'POST', op: 'send' },
    '/v1/faucet': { method: 'POST', op: 'faucetSend' },
    '/v1/get': { method: 'POST', op: 'get' },
    '/v1/account': { method: 'POST', op: 'account' },
    '/v1/time': { method: 'POST', op: 'time' },
};

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const chain = new Chain(opts.state, opts.faucetSeed);
    try {
        await chain.init();
    } catch (e) {
        if (e.loadError) fail(`cannot load state ${opts.state}: ${oneLine(e.message)}`);
        fail(`cannot start the chain: ${oneLine(e?.message ?? e)}`, 1);
    }
    try {
        await chain.save();
    } catch (e) {
        fail(`cannot save state ${opts.state}: ${oneLine(e?.message ?? e)}`);
    }

    // strict one-at-a-time execution
    let tail = Promise.resolve();
    const exclusive = (fn) => {
        const run = tail.then(fn);
        tail = run.catch(() => {});
        return run;
    };
    let shuttingDown = false;
    const inFlight = new Set();

    async function handle(req, res) {
        const url = new URL(req.url ?? '/', 'http://localhost');
        const route = ROUTES[url.pathname];
        if (!route) throw new ApiError(404, 'not_found', `unknown path ${url.pathname}`);
        if (req.method !== route.method) {
            throw Object.assign(new ApiError(405, 'method_not_allowed', `${url.pathname} accepts ${route.method} only, got ${req.method}`),
                { headers: { Allow: route.method } });
        }
        let body;
        if (route.method === 'POST') {
            const raw = await readBody(req);
            const ctype = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
            if (ctype !== 'application/json') {
                throw new ApiError(400, 'unsupported_content_type', `Content-Type must be application/json, got ${JSON.stringify(req.headers['content-type'] ?? '')}`);
            }
            try {
                body = JSON.parse(raw.toString('utf8'));
            } catch (e) {
                throw new ApiError(400, 'invalid_json', `request body is not valid JSON (${oneLine(e.message)})`);
            }
        } else {
            req.resume();
        }
        if (shuttingDown) throw new ApiError(503, 'shutting_down', 'the chain service is shutting down');
        return exclusive(() => chain[route.op](body));
    }

    const server = http.createServer((req, res) => {
        const done = new Promise((resolve) => { res.on('close', resolve); res.on('finish', resolve); });
        inFlight.add(done);
        done.then(() => inFlight.delete(done));
        handle(req, res).then((result) => sendJson(res, 200, result), (err) => {
            if (!(err instanceof ApiError)) {
                err = new ApiError(500, 'internal_error', oneLine(err?.message ?? err) || 'internal error');
            }
            const headers = { ...(err.headers ?? {}) };
            if (err.status === 413 || shuttingDown) headers.Connection = 'close';
            if (!res.headersSent && !res.destroyed) sendError(res, err, headers);
        });
    });

    server.on('error', (e) => fail(`cannot listen on ${opts.host}:${opts.port}: ${e.message}`, 1));
    server.listen(opts.port, opts.host, () => {
        const addr = server.address();
        process.stdout.write(JSON.stringify({
            event: 'listening', host: opts.host, port: addr.port, faucet: chain.faucet.address.toRawString(),
        }) + '\n');
    });

    async function shutdown() {
        if (shuttingDown) return;
        shuttingDown = true;
        server.close();
        server.closeIdleConnections?.();
        for (;;) {                                   // let every accepted request finish
            const t = tail;
            await t;
            if (t === tail) break;
        }
        await Promise.race([Promise.all([...inFlight]), new Promise((r) => setTimeout(r, 2000).unref())]);
        try {
            await chain.save();
        } catch (e) {
            fail(`cannot save state ${opts.state}: ${oneLine(e?.message ?? e)}`, 1);
        }
        process.exit(0);
    }
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
}

main().catch((e) => fail(`unexpected error: ${oneLine(e?.stack ?? e)}`, 1));
