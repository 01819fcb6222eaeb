"""``warmer demo``: the whole story on a local sandbox, by running the real commands.

Each step prints the ``warmer`` command it runs, so the demo doubles as a tutorial:
sandbox up (real registries, seeded) -> generate weeks of CI logs and repositories ->
ingest -> static references -> rank per region -> sign the ranked images at the upstream
(cosign's format, the sandbox's key) -> backtest -> plan -> warm both regions through
central (signatures with their images) -> prove with skopeo, the upstream unreachable, that
a regional mirror serves what was warmed, and read its signature there the way cosign does
and verify it -> status -> sandbox down. The database is left in the demo
directory for the notebooks.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from warmer.sandbox.catalogue import Catalogue
from warmer.sandbox.front import FrontControl
from warmer.sandbox.topology import Sandbox
from warmer.units import format_size

REGIONS = ("eu", "us")
SHOWN_LINES = 25  # of each command's own output; the rest is summarised


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and shows its output."""


@dataclass
class Demo:
    directory: Path
    scale: float = 0.05
    workload_scale: float = 0.02
    weeks: int = 3
    top: int = 12
    budget: str = "1GiB"
    keep: bool = False
    echo: Any = print
    results: dict[str, Any] = field(default_factory=dict)
    _workload: Catalogue | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.directory / "warmer.toml"

    def warmer(self, *args: str, json_out: bool = False, ok: tuple[int, ...] = (0,)) -> Any:
        argv = [sys.executable, "-m", "warmer.cli.main"]
        if self.config.exists():
            argv += ["--config", str(self.config)]
        argv += list(args)
        shown = "warmer " + " ".join(shlex.quote(a) for a in args)
        self.echo(f"\n$ {shown}")
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        self.timings[shown] = time.monotonic() - t0
        if proc.returncode not in ok:
            raise DemoError(
                f"`{shown}` exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        if json_out:
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
            return [json.loads(ln) for ln in lines]
        out = proc.stdout.rstrip()
        if out:
            lines = out.splitlines()
            more = len(lines) - SHOWN_LINES
            self.echo("\n".join(lines[:SHOWN_LINES]))
            if more > 0:
                self.echo(f"  ... ({more} more line{'s' if more > 1 else ''})")
        return out

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        old = Sandbox.load(self.directory)
        if old is not None:
            old.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        self.warmer(
            "sandbox", "up", "--dir", str(self.directory), "--scale", str(self.scale),
            "--latency", "25", "--bandwidth", "40MB/s",
        )  # fmt: skip
        box = Sandbox.load(self.directory)
        assert box is not None
        try:
            self._story(box)
        finally:
            if not self.keep:
                self.warmer("sandbox", "down", "--dir", str(self.directory))
        self.results["seconds"] = round(time.monotonic() - started, 1)
        return self.results

    def _story(self, box: Sandbox) -> None:
        ci = self.directory / "ci"
        self.warmer("generate", "--out", str(ci), "--weeks", str(self.weeks), "--seed", "1")
        at = self._history_end(ci)
        self._seed_workload_images(box, ci, at)
        rules = [f"--rule=path:*/logs/{r}/*={r}" for r in REGIONS]
        ingest = self.warmer("ingest", str(ci / "logs"), *rules, "--json", json_out=True)
        self.results["ingest"] = ingest[-1] if ingest else {}
        self.warmer("refs", str(ci / "repos"))
        rankings: dict[str, list[dict[str, Any]]] = {}
        for region in REGIONS:
            rows = self.warmer(
                "rank", "--region", region, "--at", at, "--top", str(self.top), "--json",
                json_out=True,
            )  # fmt: skip
            rankings[region] = rows
        self.results["rankings"] = rankings
        self._sign_ranked(box, rankings)
        bt = self.warmer(
            "backtest", "--region", "eu", "--budget", "2GiB", "--catalogue",
            str(ci / "catalogue.json"), "--json", json_out=True, ok=(0, 1),
        )  # fmt: skip
        self.results["backtest"] = bt[-1] if bt else {}
        front = FrontControl(box.front_url)
        front.reset()
        self.warmer("plan", "--region", "eu", "--top", str(self.top), "--budget", self.budget)
        runs = {}
        for region in REGIONS:
            out = self.warmer(
                "run", "--region", region, "--top", str(self.top), "--budget", self.budget,
                "--json", json_out=True, ok=(0, 1),
            )  # fmt: skip
            runs[region] = out[-1] if out else {}
        self.results["runs"] = runs
        self.results["wan"] = front.stats()
        self._proof(box, front, runs)
        self._tag_moves(box)
        self.warmer("status")

    def _seed_workload_images(self, box: Sandbox, ci: Path, at: str) -> None:
        """Push the docker.io images the generated workload uses, as they were at ``at``."""
        from datetime import datetime

        from warmer.sandbox.catalogue import from_workload
        from warmer.sandbox.seed import run_sync, seed

        images = json.loads((ci / "catalogue.json").read_text())["images"]
        cat = from_workload(images, datetime.fromisoformat(at), scale=self.workload_scale)
        report = run_sync(seed(box.upstream_url, cat))
        self._workload = cat
        self.echo(
            f"\n(seeded the upstream with the {len(cat.tags)} docker.io images the workload "
            f"pulls, at {self.workload_scale:g} of their real size: "
            f"{format_size(report.bytes_pushed)})"
        )

    def _sign_ranked(self, box: Sandbox, rankings: dict[str, list[dict[str, Any]]]) -> None:
        """Sign every tag of the ranked docker.io repositories at the upstream, as
        ``cosign sign --recursive --key cosign.key`` would (the key is made in the demo
        directory), so the warm carries the signatures and the proof can verify one."""
        from warmer.sandbox.seed import run_sync, sandbox_signer, sign_catalogue

        if self._workload is None:
            return
        repos = sorted({
            str(row["image"]).split("/", 1)[1] for rows in rankings.values() for row in rows
            if str(row.get("image", "")).startswith("docker.io/")
        })  # fmt: skip
        signer = sandbox_signer(self.directory)
        n = run_sync(sign_catalogue(box.upstream_url, self._workload, signer, tuple(repos)))
        self.results["signed"] = n
        self.echo(
            f"\n(signed {n} image and platform digests of {len(repos)} ranked repositories at "
            f"the upstream with {self.directory / 'cosign.key'}, in cosign's format)"
        )

    def _signature_proof(self, url: str, repo_tag: str) -> dict[str, Any]:
        """What ``cosign verify --key cosign.pub`` reads, from the regional mirror alone:
        the tag's digest, its ``sha256-<hex>.sig`` manifest by tag, each payload blob."""
        import hashlib

        import httpx

        from warmer.oci.cosign import (
            SignatureError,
            artifact_tag,
            check_signature,
            load_public_key,
            signature_layers,
        )
        from warmer.oci.manifest import MANIFEST_ACCEPT

        repository, _, tag = repo_tag.rpartition(":")
        key = load_public_key((self.directory / "cosign.pub").read_bytes())
        accept = {"Accept": MANIFEST_ACCEPT}
        self.echo(f"\n(reading {repo_tag}'s signature from the eu mirror as cosign does)")
        try:
            with httpx.Client(base_url=f"{url}/v2/{repository}", timeout=60) as http:
                top = http.get(f"/manifests/{tag}", headers=accept)
                top.raise_for_status()
                digest = "sha256:" + hashlib.sha256(top.content).hexdigest()
                sig = http.get(f"/manifests/{artifact_tag(digest)}", headers=accept)
                if sig.status_code != 200:
                    raise SignatureError(f"no signature there (HTTP {sig.status_code})")
                for layer in signature_layers(sig.json()):
                    payload = http.get(f"/blobs/{layer.digest}").content
                    check_signature(payload, layer.signature, [key], digest, repository,
                                    registries={"docker.io"})  # fmt: skip
                    return {"ok": True, "digest": digest, "signature": artifact_tag(digest)}
                raise SignatureError("no cosign signature layer")
        except (httpx.HTTPError, SignatureError, ValueError) as exc:
            return {"ok": False, "error": str(exc)[:300]}

    def _tag_moves(self, box: Sandbox) -> None:
        """A warmed tag moves upstream; refresh finds it by HEAD and warms the new digest;
        verify re-reads a sample of what the tiers hold."""
        from warmer.sandbox.seed import move_tag, run_sync

        image = (self.results.get("proof") or {}).get("image")
        if not image or self._workload is None:
            return
        repo_tag = image.split("/", 1)[1]
        repository, _, tag = repo_tag.rpartition(":")
        new = run_sync(move_tag(box.upstream_url, self._workload, repository, tag, 1))
        self.echo(f"\n(the upstream moved {repository}:{tag} to {new.digest[:19]}...)")
        rows = self.warmer("refresh", "--region", "eu", "--json", json_out=True, ok=(0, 1))
        self.results["refresh"] = rows[-1] if rows else {}
        self.warmer("drift")
        rows = self.warmer(
            "verify", "--region", "eu", "--sample", "0.5", "--seed", "1", "--json",
            json_out=True, ok=(0, 1),
        )  # fmt: skip
        self.results["verify"] = rows[-1] if rows else {}

    def _history_end(self, ci: Path) -> str:
        meta = ci / "meta.json"
        if meta.exists():
            data = json.loads(meta.read_text())
            for key in ("end", "until", "history_end"):
                if key in data:
                    return str(data[key])
            if "start" in data and "weeks" in data:
                from datetime import datetime

                start = datetime.fromisoformat(str(data["start"]))
                return (start + timedelta(weeks=int(data["weeks"]))).isoformat()
        from analytics.generate.workload import Params

        return (Params().start + timedelta(weeks=self.weeks)).isoformat()

    def _proof(self, box: Sandbox, front: FrontControl, runs: dict[str, Any]) -> None:
        """skopeo pulls a warmed image from a regional mirror while the upstream answers 503."""
        from warmer.config import load
        from warmer.store.ledger import Ledger

        cfg = load(self.config)
        ledger = Ledger(cfg.database.url)
        run = ledger.run(int(runs.get("eu", {}).get("run") or 0))
        images = json.loads(run.images) if run is not None else []
        if not images:
            self.results["proof"] = {"ok": False, "why": "nothing was warmed in eu"}
            return
        image = images[0]
        repo_tag = image.split("/", 1)[1]
        front.add_fault("status", match="/v2/", count=100_000, status=503)
        dest = self.directory / "proof"
        host = box.eu_url.split("://", 1)[1]
        cmd = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
               f"docker://{host}/{repo_tag}", f"dir:{dest}"]  # fmt: skip
        self.echo(f"\n$ {' '.join(cmd)}    # upstream down (503 for everything)")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        signature = self._signature_proof(box.eu_url, repo_tag)  # the upstream still down
        front.clear_faults()
        ok = proc.returncode == 0
        digests: list[str] = []
        if ok:
            manifest = json.loads((dest / "manifest.json").read_text())
            digests = [manifest["config"]["digest"]] + [x["digest"] for x in manifest["layers"]]
            shutil.rmtree(dest, ignore_errors=True)
        self.results["proof"] = {
            "image": image,
            "ok": ok,
            "blobs": len(digests),
            "error": proc.stderr.strip()[-300:] if not ok else "",
            "signature": signature,
        }


def summary(results: dict[str, Any]) -> str:
    """What a person wants to read at the end."""
    lines = ["", "=== summary ==="]
    ing = results.get("ingest", {})
    if ing:
        lines.append(
            f"ingested {ing.get('events', '?')} image uses from {ing.get('files', '?')} log files "
            f"({ing.get('skipped_lines', ing.get('skipped', 0))} lines skipped)"
        )
    for region, rows in results.get("rankings", {}).items():
        lines.append(f"predicted for {region} (top {len(rows)}):")
        for row in rows[:5]:
            lines.append(
                f"  {row.get('rank', '?'):>2}. {row.get('image')}:{row.get('tag')}  "
                f"{float(row.get('score', 0)):.1f} pulls/day  - {row.get('reasons', '')}"
            )
    bt = results.get("backtest", {})
    overall = {r["strategy"]: r for r in bt.get("rates", []) if r.get("kind") == "all"}
    if overall:
        parts = [
            f"{name} {overall[name]['byte_hit_rate']:.0%}"
            for name in ("model", "yesterday", "frequency", "static", "oracle")
            if name in overall
        ]
        days = overall.get("model", {}).get("days", "?")
        lines.append(
            f"backtest eu, {days} days at {format_size(bt.get('budget', 0))}/day, "
            "byte hit rate: " + ", ".join(parts)
        )
    for region, run in results.get("runs", {}).items():
        by_mirror = run.get("bytes_by_mirror", {})
        lines.append(
            f"warm {region}: {run.get('done', 0)} items done, {run.get('failed', 0)} failed, "
            f"{run.get('skipped', 0)} skipped in {run.get('seconds', 0)}s; "
            + ", ".join(f"{m} {format_size(b)}" for m, b in sorted(by_mirror.items()))
        )
        share = run.get("artifacts") or {}
        if share.get("items"):
            lines.append(
                f"  signatures with them: {share.get('done', 0)} of {share['items']} items, "
                f"{format_size(share.get('bytes', 0))}"
            )
    wan = results.get("wan", {})
    if wan:
        gets = wan.get("requests", {}).get("manifest", {}).get("GET", 0)
        lines.append(
            f"WAN (upstream front): {format_size(wan.get('bytes_served', 0))} in "
            f"{wan.get('total_requests', 0)} requests; {gets} counted manifest GETs"
        )
    proof = results.get("proof", {})
    if proof:
        why = proof.get("error") or proof.get("why")
        verdict = "served" if proof.get("ok") else f"FAILED: {why}"
        lines.append(
            f"proof: skopeo pulled {proof.get('image')} from the eu mirror with the upstream "
            f"down: {verdict} ({proof.get('blobs', 0)} blobs)"
        )
        sig = proof.get("signature") or {}
        lines.append(
            "proof: its cosign signature read from the eu mirror, upstream down: "
            + ("verifies with cosign.pub" if sig.get("ok") else f"FAILED: {sig.get('error')}")
        )
    ref = results.get("refresh", {})
    if ref:
        lines.append(
            "refresh: "
            + ", ".join(f"{k} {v}" for k, v in ref.items() if isinstance(v, int | float))
        )
    ver = results.get("verify", {})
    if ver:
        lines.append(
            "verify: "
            + ", ".join(f"{k} {v}" for k, v in ver.items() if isinstance(v, int | float | bool))
        )
    lines.append(f"total {results.get('seconds', '?')}s")
    return "\n".join(lines)
