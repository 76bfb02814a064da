"""Chain backends without a chain: TON config loading, get-method stack encoding, cell layouts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pytoniq_core import Address, begin_cell

from cocoon.chain import contracts as c
from cocoon.chain import ton
from cocoon.chain.errors import ChainError
from cocoon.chain.sandbox import decode_stack, encode_stack
from cocoon.chain.ton import TonLedger, load_global_config


def test_a_ton_global_config_must_list_liteservers(tmp_path: Path) -> None:
    good = tmp_path / "global.json"
    good.write_text(json.dumps({"liteservers": [{"ip": 1, "port": 2, "id": {"key": "k"}}], "validator": {}}))
    assert load_global_config(str(good))["liteservers"][0]["port"] == 2
    for text, why in (("{", "not JSON"), ('{"liteservers": []}', "no liteservers"), ("[]", "no liteservers")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ChainError, match=why):
            load_global_config(str(bad))
    with pytest.raises(ChainError, match="cannot read"):
        load_global_config(str(tmp_path / "missing.json"))
    assert TonLedger(str(good)).name == "ton"  # connects lazily: nothing is dialed here


def test_a_network_config_is_fetched_bounded_and_outside_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    sizes = {"/small": 100, "/huge": ton.MAX_CONFIG + 1}

    class ConfigServer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"liteservers": [{"ip": 1}], "pad": "x" * sizes[self.path]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), ConfigServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setitem(ton.NETWORKS, "small", base + "/small")
    monkeypatch.setitem(ton.NETWORKS, "huge", base + "/huge")
    try:
        assert load_global_config("small")["liteservers"] == [{"ip": 1}]
        with pytest.raises(ChainError, match="larger than"):
            load_global_config("huge")
        # a ledger loads it in a thread, not in the event loop that would wait for ton.org meanwhile
        loaded_in: list[threading.Thread] = []

        def load(source: str) -> dict[str, object]:
            loaded_in.append(threading.current_thread())
            raise ChainError("unreachable", "not here")

        monkeypatch.setattr(ton, "load_global_config", load)
        with pytest.raises(ChainError):
            asyncio.run(TonLedger("small").account(Address((0, bytes(32)))))
        assert loaded_in and loaded_in[0] is not threading.main_thread()
    finally:
        server.shutdown()
        server.server_close()


def test_stack_items_survive_the_trip_to_the_chain_service_and_back() -> None:
    cell = begin_cell().store_uint(7, 8).end_cell()
    items = [2**200, -1, None, cell, cell.begin_parse(), [1, [cell]]]
    back = decode_stack(encode_stack(items))
    assert back[0] == 2**200 and back[1] == -1 and back[2] is None
    assert back[3].hash == cell.hash and back[4].to_cell().hash == cell.hash
    assert back[5][0] == 1 and back[5][1][0].hash == cell.hash
    with pytest.raises(TypeError):
        encode_stack([True])
    with pytest.raises(ChainError):
        decode_stack([{"type": "weird"}])
    with pytest.raises(ChainError):
        decode_stack("not a list")


def test_channel_addresses_depend_on_every_parameter() -> None:
    base = {
        "root": Address((0, b"\x01" * 32)),
        "client": Address((0, b"\x02" * 32)),
        "proxy": Address((0, b"\x03" * 32)),
        "close_delay": 3600,
        "client_key": b"\x04" * 32,
        "proxy_key": b"\x05" * 32,
    }
    address = c.address_of(c.client_channel_init(**base))
    for name, other in (("close_delay", 60), ("client_key", b"\x06" * 32), ("proxy", Address((0, b"\x07" * 32)))):
        assert c.address_of(c.client_channel_init(**{**base, name: other})) != address


def test_registry_strings_are_bounded() -> None:
    assert c.read_text(c.text_cell("127.0.0.1:9300")) == "127.0.0.1:9300"
    for text in ("", "x" * 128):
        with pytest.raises(ValueError):
            c.text_cell(text)
    with pytest.raises(ValueError):
        c.add_image(c.ROLE_WORKER, b"short")
