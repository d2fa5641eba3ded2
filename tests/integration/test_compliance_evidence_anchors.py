"""An evidence series attacked the way someone who can write the evidence directory
would: the newest runs removed, a forged all-pass series signed with a new key, a key
used outside its validity period, run.json's time edited to get bundles pruned, garbage
and tampered archives beside the bundles, attestations unsigned or signed by someone
else. Real keys, real signatures, real files; `compliance verify` as a subprocess."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from compliance.attestations import current, load_attesters, record
from compliance.catalog import load_catalogs
from compliance.checklist_run import markdown, run_items
from compliance.checklists import load_checklists
from compliance.checks import load_checks
from compliance.evidence import (
    EvidenceError,
    archive,
    generate_key,
    key_id,
    load_signing_key,
    series_start,
    signed_record,
    write_bundle,
    write_head,
)
from compliance.schedule import prune
from tests.support.commands import compliance
from tests.support.evidence import attesters, issued_certificate

NOW = datetime.datetime.now(datetime.UTC)


def results(status: str) -> list[dict]:
    return [
        {
            "check": "ssh.keys_only",
            "host": "core-01",
            "status": status,
            "detail": "-",
            "severity": "high",
            "controls": {},
            "waiver": None,
        }
    ]


def run(directory: Path, key, head: Path, status: str = "fail") -> Path:
    """One run as `compliance check --evidence` makes it: chained where the series head
    says, then the head moved on."""
    start = series_start(directory, head, key)
    made = write_bundle(
        directory,
        "daily",
        results(status),
        [{"host": "core-01"}],
        {"core-01": {}},
        {},
        key,
        previous=start.previous,
    )
    write_head(head, key, made, start.count + 1)
    return made


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    generate_key(tmp_path / "evidence.key")
    return tmp_path / "evidence.key"


@pytest.fixture
def series(tmp_path: Path, key_path: Path) -> tuple[Path, Path, list[Path]]:
    """Three runs of a daily series, its head kept outside the evidence directory."""
    key = load_signing_key(key_path)
    directory, head = tmp_path / "evidence" / "daily", tmp_path / "state" / "daily.json"
    return directory, head, [run(directory, key, head) for _ in range(3)]


def verify(target: Path, *args: str):
    return compliance("verify", str(target), *args)


def test_a_removed_newest_run_is_found_against_the_series_head(
    series, key_path: Path, tmp_path: Path
) -> None:
    directory, head, bundles = series
    pinned = ("--trusted-key", f"{key_path}.pub")
    whole = verify(directory, *pinned, "--head", str(head))
    assert whole.returncode == 0, whole.stdout
    assert "the series' newest runs are all here" in whole.stdout
    shutil.rmtree(bundles[-1])
    bundles[-1].with_name(bundles[-1].name + ".tar.gz").unlink(missing_ok=True)
    # The chain alone cannot tell: what is left is a perfect series.
    assert verify(directory, *pinned).returncode == 0
    found = verify(directory, *pinned, "--head", str(head))
    assert found.returncode == 1
    assert f"names {bundles[-1].name} as the newest of 3 bundles" in found.stdout
    assert "the newest runs were removed" in found.stdout
    # The next run does not chain over the gap: it names the removed bundle, so the
    # chain itself shows the gap from now on, head or not.
    key = load_signing_key(key_path)
    start = series_start(directory, head, key)
    assert start.previous["id"] == bundles[-1].name and "not in" in start.warning
    after = run(directory, key, head)
    chained = verify(directory, *pinned)
    assert chained.returncode == 1
    assert (
        f"{after.name}: follows {bundles[-1].name}, but the bundle before it is "
        f"{bundles[-2].name}" in chained.stdout
    )


def test_a_forged_or_rewound_head_does_not_verify(series, key_path: Path, tmp_path: Path) -> None:
    directory, head, bundles = series
    pinned = ("--trusted-key", f"{key_path}.pub")
    signed = json.loads(head.read_text())
    # Rewound to the second bundle (to hide the third's removal): the signature breaks.
    signed["record"]["newest"] = {"id": bundles[1].name, "manifest_sha256": "0" * 64}
    signed["record"]["count"] = 2
    head.write_text(json.dumps(signed))
    edited = verify(directory, *pinned, "--head", str(head))
    assert edited.returncode == 1 and "the signature does not verify" in edited.stdout
    # Re-signed with a key of the forger's own: not the trusted key.
    generate_key(tmp_path / "forger.key")
    forger = load_signing_key(tmp_path / "forger.key")
    head.write_bytes(signed_record(signed["record"], forger))
    resigned = verify(directory, *pinned, "--head", str(head))
    assert resigned.returncode == 1 and "not by a trusted key" in resigned.stdout
    # And the scheduler will not write a new bundle over a head it cannot verify.
    with pytest.raises(EvidenceError, match="not by a trusted key"):
        series_start(directory, head, load_signing_key(key_path))
    # A series with bundles and no head is not silently given a new one either.
    head.unlink()
    with pytest.raises(EvidenceError, match=r"no series head, but .* holds 3 bundles"):
        series_start(directory, head, load_signing_key(key_path))


def test_an_empty_target_or_no_trust_anchor_is_an_error(
    series, key_path: Path, tmp_path: Path
) -> None:
    directory, _, _ = series
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = verify(empty, "--trusted-key", f"{key_path}.pub")
    assert nothing.returncode == 2 and "no evidence bundles in it" in nothing.stderr
    bare = verify(directory)
    assert bare.returncode == 2 and "no trust anchor" in bare.stderr
    both = verify(directory, "--trust-embedded-key", "--trusted-key", f"{key_path}.pub")
    assert both.returncode == 2 and "without --trusted-key" in both.stderr


def test_a_forged_all_pass_series_fails_with_a_trust_anchor(
    series, key_path: Path, tmp_path: Path
) -> None:
    directory, _, bundles = series
    # The whole series rewritten: every run passes, signed by a new key, chained
    # properly, its key embedded in each bundle as the real ones are.
    generate_key(tmp_path / "forger.key")
    forger = load_signing_key(tmp_path / "forger.key")
    forged = tmp_path / "forged" / "daily"
    made = [
        write_bundle(
            forged, "daily", results("pass"), [{"host": "core-01"}], {"core-01": {}}, {}, forger
        )
        for _ in bundles
    ]
    pinned = verify(forged, "--trusted-key", f"{key_path}.pub")
    assert pinned.returncode == 1
    assert pinned.stdout.count("not by a trusted key") == len(made)
    # Trusting the embedded key is possible, but says it proves nothing.
    embedded = verify(forged, "--trust-embedded-key")
    assert embedded.returncode == 3
    assert embedded.stdout.splitlines()[0].startswith("UNVERIFIED: no trust anchor")
    assert all(line.startswith("UNVERIFIED ") for line in embedded.stdout.splitlines()[1:4])
    assert "OK " not in embedded.stdout
    # A forged bundle inside the real series is named too.
    shutil.rmtree(bundles[1])
    shutil.copytree(made[1], bundles[1])
    mixed = verify(directory, "--trusted-key", f"{key_path}.pub")
    assert mixed.returncode == 1 and f"FAILED {bundles[1].name}" in mixed.stdout


def test_a_key_counts_only_within_its_validity_period(
    series, key_path: Path, tmp_path: Path
) -> None:
    directory, head, _ = series
    keys = tmp_path / "keys.yml"
    retired = (NOW - datetime.timedelta(days=1)).isoformat()
    keys.write_text(
        f"keys:\n  - key: evidence.key.pub\n    not_before: 2020-01-01T00:00:00Z\n"
        f"    not_after: {retired}\n"
    )
    late = verify(directory, "--key-list", str(keys), "--head", str(head))
    assert late.returncode == 1
    assert late.stdout.count("FAILED") == 3
    # The head was signed after the key's period too.
    [head_line] = [line for line in late.stdout.splitlines() if line.startswith("HEAD")]
    assert "outside its validity period" in head_line
    keys.write_text("keys:\n  - key: evidence.key.pub\n    not_before: 2020-01-01T00:00:00Z\n")
    assert verify(directory, "--key-list", str(keys), "--head", str(head)).returncode == 0
    keys.write_text("keys:\n  - key: evidence.key.pub\n    not_before: 2020-01-01\n")
    naive = verify(directory, "--key-list", str(keys))
    assert naive.returncode == 2 and "has no time zone" in naive.stderr


def test_retention_ignores_an_edited_finished_time(series, key_path: Path) -> None:
    directory, _, bundles = series
    key = load_signing_key(key_path)
    # run.json says the two older runs finished years ago; it is not signed.
    for bundle in bundles[:2]:
        path = bundle / "run.json"
        run_json = json.loads(path.read_text())
        run_json["finished"] = "2001-01-01T00:00:00+00:00"
        path.write_text(json.dumps(run_json))
    assert prune(directory, 30, key) == []
    assert all(b.is_dir() for b in bundles)
    # Nor can the signed time be edited: the signature breaks, and pruning stops there.
    manifest = bundles[0] / "manifest.json"
    manifest.write_text(
        manifest.read_text().replace(f'"signed_at": "{NOW.year}', '"signed_at": "2001')
    )
    assert prune(directory, 30, key) == []
    # When the signed times are old enough, the oldest in a row go, the chain verifies.
    later = NOW + datetime.timedelta(days=400)
    assert prune(directory, 365, key, now=later) == []  # bundles[0] cannot be verified
    shutil.rmtree(bundles[0])
    # bundles[1] is now the first; retention may only remove from the start of the chain.
    assert prune(directory, 365, key, now=later) == [bundles[1].name]


def test_archives_and_stray_files_in_a_series_are_checked(
    series, key_path: Path, tmp_path: Path
) -> None:
    directory, _, bundles = series
    pinned = ("--trusted-key", f"{key_path}.pub")
    for bundle in bundles:
        archive(bundle)
    assert verify(directory, *pinned).returncode == 0
    # Garbage beside the bundles, named like an archive of one and like none.
    (directory / "20991231T000000.000000Z-daily.tar.gz").write_bytes(b"not a gzip at all")
    garbage = verify(directory, *pinned)
    assert garbage.returncode == 1
    assert (
        "20991231T000000.000000Z-daily.tar.gz: an archive, but there is no bundle" in garbage.stdout
    )
    (directory / "20991231T000000.000000Z-daily.tar.gz").unlink()
    packed = bundles[0].with_name(bundles[0].name + ".tar.gz")
    packed.write_bytes(b"\x1f\x8b garbage")
    broken = verify(directory, *pinned)
    assert (
        broken.returncode == 1 and f"{packed.name}: not a readable bundle archive" in broken.stdout
    )
    # A well-formed archive whose results say something else than its bundle.
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for path in sorted(p for p in bundles[0].rglob("*") if p.is_file()):
            data = path.read_bytes()
            if path.name == "results.json":
                data = data.replace(b'"fail"', b'"pass"')
            info = tarfile.TarInfo(f"{bundles[0].name}/{path.relative_to(bundles[0])}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    packed.write_bytes(buffer.getvalue())
    tampered = verify(directory, *pinned)
    assert tampered.returncode == 1
    assert f"{packed.name}: differs from its bundle in results.json" in tampered.stdout
    archive(bundles[0])
    (directory / "notes.txt").write_text("something else")
    stray = verify(directory, *pinned)
    assert stray.returncode == 1 and "notes.txt: not part of an evidence series" in stray.stdout


def test_only_attestations_signed_by_their_author_count(tmp_path: Path) -> None:
    catalogs = load_catalogs()
    checklists = load_checklists(catalogs, load_checks(catalogs))
    checklist = checklists["daily"]
    store = tmp_path / "attestations"
    pinned = load_attesters(attesters(tmp_path, "alice", "mallory"))
    item = "daily.security_alerts"
    # A self-declared name, no signature (the record as attestations used to be).
    store.mkdir()
    (store / f"{NOW.strftime('%Y%m%dT%H%M%S.%fZ')}-{item}.json").write_text(
        json.dumps(
            {"item": item, "by": "alice", "note": "all quiet", "at": NOW.isoformat(), "files": []}
        )
    )
    found, refused = current(store, "daily", item, attesters=pinned)
    assert found is None and "not signed - a self-declared name counts for nothing" in refused[0]
    # Mallory signs with her own key and claims to be alice.
    record(
        store,
        checklists,
        item,
        "alice",
        "all quiet",
        [],
        load_signing_key(tmp_path / "mallory.key"),
    )
    found, refused = current(store, "daily", item, attesters=pinned)
    assert found is None and len(refused) == 2
    assert "not by a trusted key" in refused[1] and "claims to be by alice" in refused[1]
    [items] = [run_items(checklist, [], store, attesters=pinned)]
    alerts = next(i for i in items if i.id == item)
    assert alerts.status == "pending" and alerts.attestation is None
    report = markdown(checklist, items, [], NOW)
    assert "## Attestations not counted (unverified)" in report and "claims to be by" in report
    # Alice's own signature counts, and the report says whose key signed.
    record(
        store,
        checklists,
        item,
        "alice",
        "all quiet, really",
        [],
        load_signing_key(tmp_path / "alice.key"),
    )
    items = run_items(checklist, [], store, attesters=pinned)
    alerts = next(i for i in items if i.id == item)
    assert alerts.status == "pass" and alerts.attestation["by"] == "alice"
    assert alerts.attestation["signed_by"] == key_id(pinned["alice"])
    assert "(signed, key " in markdown(checklist, items, [], NOW)
    # No attesters file: nothing counts, and the report says why.
    _, refused = current(store, "daily", item)
    assert all("no attesters file" in r or "not signed" in r for r in refused)
    # An edited note breaks alice's signature.
    newest = sorted(store.iterdir())[-1]
    newest.write_text(newest.read_text().replace("really", "mostly"))
    found, refused = current(store, "daily", item, attesters=pinned)
    assert found is None and "the signature does not verify" in refused[-1]


def test_an_attestation_by_certificate_counts_only_for_the_name_it_certifies(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    catalogs = load_catalogs()
    checklists = load_checklists(catalogs, load_checks(catalogs))
    store, item = tmp_path / "attestations", "daily.security_alerts"
    authority = ec.generate_private_key(ec.SECP256R1())
    ca = issued_certificate("people CA", authority.public_key(), "people CA", authority)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "attesters.yml").write_text("attesters: {}\ncertificate_authorities: [ca.pem]\n")
    pinned = load_attesters(tmp_path / "attesters.yml")
    generate_key(tmp_path / "carol.key")
    carol = load_signing_key(tmp_path / "carol.key")
    certificate = issued_certificate("carol", carol.public_key(), "people CA", authority)
    path = tmp_path / "carol.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    # Through the command line, as a person attests.
    made = compliance(
        "attest",
        item,
        "--by",
        "carol",
        "--note",
        "reviewed",
        "--store",
        str(store),
        "--key",
        str(tmp_path / "carol.key"),
        "--certificate",
        str(path),
    )
    assert made.returncode == 0, made.stderr
    found, refused = current(store, "daily", item, attesters=pinned)
    assert found.by == "carol" and refused == []
    # carol's certificate does not make her dave.
    wrong = compliance(
        "attest",
        item,
        "--by",
        "dave",
        "--note",
        "x",
        "--store",
        str(store),
        "--key",
        str(tmp_path / "carol.key"),
        "--certificate",
        str(path),
    )
    assert wrong.returncode == 2 and "names 'carol', not --by 'dave'" in wrong.stderr
    shutil.rmtree(store)
    # A record written by hand: carol's certificate, claiming dave.
    signed = {
        "item": item,
        "by": "dave",
        "note": "x",
        "at": NOW.isoformat(),
        "files": [],
        "certificate": path.read_text(),
    }
    store.mkdir()
    (store / f"{NOW.strftime('%Y%m%dT%H%M%S.%fZ')}-{item}.json").write_bytes(
        signed_record(signed, carol)
    )
    found, refused = current(store, "daily", item, attesters=pinned)
    assert found is None and "claims to be by dave" in refused[0]
    # A certificate for carol that no pinned authority issued (self-made).
    generate_key(tmp_path / "mallory.key")
    mallory = load_signing_key(tmp_path / "mallory.key")
    forged = issued_certificate("carol", mallory.public_key(), "people CA", mallory)
    record(store, checklists, item, "carol", "forged", [], mallory, certificate=forged)
    found, refused = current(store, "daily", item, attesters=pinned)
    assert found is None and "the certificate of carol does not verify" in refused[-1]
