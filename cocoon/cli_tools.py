"""The ``cocoon attest`` and ``cocoon market`` commands: tools that inspect, rather than run, nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cocoon.files import read_bounded


def fail(message: str) -> None:
    """End the command with one line on stderr and exit code 2."""
    typer.echo(f"cocoon: {message}", err=True)
    raise typer.Exit(2)


attest_app = typer.Typer(help="Inspect and verify TEE quotes, reports and evidence files.", no_args_is_help=True)


MAX_EVIDENCE_FILE = 4 * 1024 * 1024  # a quote is kilobytes, an evidence file with collateral tens of them


def _read(path: Path) -> bytes:
    try:
        return read_bounded(path, MAX_EVIDENCE_FILE)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
        raise  # unreachable: _fail exits


@attest_app.command("show")
def attest_show(
    file: Annotated[Path, typer.Argument(help="A TDX/SGX quote, an SEV-SNP report or a Cocoon evidence file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a readable listing.")] = False,
) -> None:
    """Print every field of a quote, report or evidence envelope."""
    from cocoon.attest.errors import AttestationError
    from cocoon.attest.inspect import describe

    try:
        fields = describe(_read(file))
    except AttestationError as exc:
        fail(f"{file}: {exc}")
        return
    if as_json:
        typer.echo(json.dumps(fields, indent=2))
        return
    _print_tree(fields, 0)


def _print_tree(value: Any, depth: int) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            typer.echo("  " * depth + f"{key}:")
            _print_tree(item, depth + 1)
        else:
            typer.echo("  " * depth + f"{key}: {item}")


@attest_app.command("image-hash")
def attest_image_hash(
    file: Annotated[Path, typer.Argument(help="A TDX quote, an SEV-SNP report or a Cocoon evidence file.")],
) -> None:
    """Print the image hash (see docs/attestation.md) that policies list."""
    from cocoon.attest.errors import AttestationError
    from cocoon.attest.inspect import image_hash

    try:
        typer.echo(image_hash(_read(file)).hex())
    except AttestationError as exc:
        fail(f"{file}: {exc}")


@attest_app.command("verify")
def attest_verify(
    file: Annotated[Path, typer.Argument(help="A TDX quote, an SEV-SNP report or a Cocoon evidence file.")],
    collateral: Annotated[
        Path | None, typer.Option(help="DCAP collateral JSON (dcap-qvl layout) for a TDX quote.")
    ] = None,
    now: Annotated[str | None, typer.Option(help="Verify as of this ISO 8601 time instead of the clock.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy TOML; default: production rules, any image.")] = None,
    role: Annotated[str, typer.Option(help="Role whose policy applies: worker or proxy.")] = "worker",
    vcek: Annotated[Path | None, typer.Option(help="SEV-SNP: the VCEK certificate (DER).")] = None,
    chain: Annotated[Path | None, typer.Option(help="SEV-SNP: ASK and ARK certificates (PEM).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Verify evidence: vendor signatures and chain, TCB status, debug, image (and claims for an
    evidence envelope). Exit code 0 only when it is accepted."""
    import datetime
    import time

    import msgspec as _msgspec

    from cocoon.attest.errors import AttestationError
    from cocoon.attest.inspect import as_evidence
    from cocoon.attest.policy import Policy, PolicyError, RolePolicy, load_policy
    from cocoon.attest.verifier import EvidenceVerifier

    try:
        moment = (
            int(datetime.datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp()) if now else int(time.time())
        )
    except ValueError:
        fail(f"--now {now!r} is not an ISO 8601 time")
        return
    try:
        chosen = (
            load_policy(policy)
            if policy
            else Policy(proxy=RolePolicy(image_hashes="*"), worker=RolePolicy(image_hashes="*"))
        )
    except PolicyError as exc:
        fail(str(exc))
        return
    result: dict[str, Any] = {"file": str(file)}
    try:
        evidence = as_evidence(_read(file))
        extra = {
            "collateral": _read(collateral) if collateral else evidence.collateral,
            "vcek": _read(vcek) if vcek else evidence.vcek,
            "cert_chain": _read(chain) if chain else evidence.cert_chain,
        }
        evidence = _msgspec.structs.replace(evidence, **extra)
        verifier = EvidenceVerifier(chosen)
        vendor = verifier.vendor_check(evidence, moment)
        result.update(
            tcb_status=vendor.status,
            advisories=list(vendor.advisories),
            image_hash=vendor.image.hex(),
            measurements=vendor.measurements,
        )
        verifier.check_platform(vendor, role)
        if evidence.claims != b"\x90":
            from cocoon.attest.claims import check_report_data, check_validity, decode_claims

            claims = decode_claims(evidence.claims)
            check_report_data(evidence.claims, vendor.report_data)
            check_validity(claims, moment)
            result["claims_bound"] = True
        result["status"] = "accepted"
    except AttestationError as exc:
        result.update(status="rejected", reason=exc.code, detail=str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_tree(result, 0)
    raise typer.Exit(0 if result["status"] == "accepted" else 1)


def market(
    url: Annotated[str, typer.Option(help="Base URL of a running client's API.")] = "http://127.0.0.1:8000/v1",
    as_json: Annotated[bool, typer.Option("--json", help="Print the price book as JSON.")] = False,
) -> None:
    """Show the price book: per model, the live workers, their prices, free capacity and speed."""
    import httpx
    from rich.console import Console

    try:
        response = httpx.get(url.rstrip("/") + "/market", timeout=10)
        book = response.json()
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        fail(f"cannot read the price book from {url}: {exc}")
        return
    if not isinstance(book, dict):
        fail(f"{url} did not answer with a price book")
        return
    if response.status_code != 200:
        error = book.get("error")
        message = error.get("message", "") if isinstance(error, dict) else ""
        fail(f"the client answered {response.status_code}: {message}")
    if as_json:
        typer.echo(json.dumps(book, indent=2))
        return
    try:
        tables = [_market_table(entry) for entry in book.get("models") or []]
    except (KeyError, TypeError, AttributeError, ValueError):
        fail(f"{url} answered a price book this version cannot read (try --json)")
        return
    console = Console()
    for table in tables:
        console.print(table)
    if not tables:
        typer.echo("no live workers")


def _market_table(entry: dict[str, Any]) -> Any:
    """One model of the price book as a table (``KeyError``/``TypeError`` where it is malformed)."""
    from rich.table import Table

    table = Table(title=str(entry["model"]))
    for column in (
        "worker",
        "state",
        "price ×",
        "free",
        "TTFT ms",
        "tokens/s",
        "success",
        "nanoTON / 1M prompt",
        "/ 1M completion",
    ):
        table.add_column(column)
    for w in entry["workers"]:
        prices = w["nano_ton_per_million_tokens"]
        table.add_row(
            str(w["worker"])[:12], str(w.get("state", "available")), f"{w['price_coefficient']:.3f}",
            f"{w['free']}/{w['capacity']}", str(w["ttft_ms"]),
            str(w["tokens_per_second"]), str(w["success_rate"]), str(prices["prompt"]), str(prices["completion"]),
        )  # fmt: skip
    return table
