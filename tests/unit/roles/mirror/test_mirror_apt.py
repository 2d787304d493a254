"""The mirror's apt side with the real tools, no network and no lab: dpkg-deb builds a small
upstream, gpg signs it, apt resolves pins against it (roles.mirror.resolve), kiln builds the
mirror's repository from that (roles.mirror.plan/aptrepo, kiln-mirror fetch over file://),
signs it with the mirror key, and apt, in a state of its own, reads and trusts the result."""

from __future__ import annotations

import hashlib
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from kiln.core.manifest import load_manifest
from kiln.roles.mirror import aptrepo, nodetool
from kiln.roles.mirror.plan import PlanError, build_plan
from kiln.roles.mirror.resolve import AptResolver, ResolvedDeb, preferences_text, resolve_closure
from kiln.roles.mirror.settings import AptUpstream, MirrorSettings
from kiln.roles.mirror.signing import (
    MirrorKey,
    SigningError,
    init_key,
    read_public_key,
    release_signed_by,
)

ROOT = Path(__file__).resolve().parents[4]
SUITE = "upstream"

SHOW_OUTPUT = textwrap.dedent("""\
    Package: nvidia-fabricmanager-570
    Architecture: amd64
    Version: 570.148.08-1kilnlab1
    Priority: optional
    Section: misc
    Maintainer: kiln lab <lab@kiln.invalid>
    Installed-Size: 1
    Depends: nvidia-driver-570-server-open (= 570.148.08-1kilnlab1), kiln-hwsim-common
    Filename: pool/main/n/nvidia-fabricmanager-570/nvidia-fabricmanager-570_570.148.08-1kilnlab1_amd64.deb
    Size: 1240
    SHA256: 1e88a76ad0362a8e8bb2212eedc1b6b722539eade00d229ba106c8a1b9251d96
    Description: NVIDIA fabric manager (simulated)
     Simulated package of the kiln lab's vendor repository.
     .
     Second paragraph.
    Description-md5: e12640d099327e33a3773ca2a4e1b39e

    Package: datacenter-gpu-manager-4-core
    Architecture: amd64
    Version: 1:4.2.3-1kilnlab1
    Filename: pool/main/d/datacenter-gpu-manager-4-core/datacenter-gpu-manager-4-core_4.2.3-1kilnlab1_amd64.deb
    Size: 1190
    SHA256: c693b4b81068a3041e9489f14b41e4b3b3769f57fc1dececba514d59b9842fc5
    Description: DCGM core (simulated)
    """)  # noqa: E501 - apt's records, as apt-cache show prints them


def test_records_round_trip_and_pool_names_drop_the_epoch():
    records = aptrepo.parse_records(SHOW_OUTPUT)
    assert [r.key for r in records] == [
        ("nvidia-fabricmanager-570", "570.148.08-1kilnlab1", "amd64"),
        ("datacenter-gpu-manager-4-core", "1:4.2.3-1kilnlab1", "amd64"),
    ]
    assert records[0].size == 1240 and records[0].sha256.startswith("1e88a7")
    assert aptrepo.parse_records(records[0].text())[0] == records[0]
    assert records[1].pool_file() == "datacenter-gpu-manager-4-core_4.2.3-1kilnlab1_amd64.deb"
    packages = aptrepo.packages_text(records + records[:1])
    stanzas = aptrepo.parse_records(packages)
    assert [s.package for s in stanzas] == ["datacenter-gpu-manager-4-core",
                                            "nvidia-fabricmanager-570"]  # sorted, no duplicate
    assert stanzas[1].get("Filename") == \
        "pool/main/nvidia-fabricmanager-570_570.148.08-1kilnlab1_amd64.deb"
    assert " .\n Second paragraph." in packages


def test_bad_records_name_the_line():
    with pytest.raises(aptrepo.AptIndexError, match="line 2: not a 'Field: value' line"):
        aptrepo.parse_records("Package: x\nthis is not a field\n")
    with pytest.raises(aptrepo.AptIndexError, match="line 1: stanza without"):
        aptrepo.parse_records("Package: x\n")


def test_print_uris_lines_give_package_and_unquoted_version():
    output = (
        "'http://10.231.0.1:8081/apt/pool/main/libn/libnccl2/libnccl2_2.26.5-1%2bcuda12.8kilnlab1"
        "_amd64.deb' libnccl2_2.26.5-1+cuda12.8kilnlab1_amd64.deb 796 SHA256:" + "a" * 64 + "\n"
        "'http://x/dmsetup_2%3a1.02.185-2_amd64.deb' dmsetup_2%3a1.02.185-2_amd64.deb 10 SHA256:"
        + "b" * 64 + "\n"
    )
    first, second = aptrepo.parse_print_uris(output)
    assert (first.package, first.version, first.architecture, first.size) == (
        "libnccl2", "2.26.5-1+cuda12.8kilnlab1", "amd64", 796)
    assert second.version == "2:1.02.185-2"
    with pytest.raises(aptrepo.AptIndexError, match="line 1"):
        aptrepo.parse_print_uris("'http://x/y' broken\n")


def test_release_lists_index_hashes_and_gzip_is_reproducible():
    packages = aptrepo.packages_text(aptrepo.parse_records(SHOW_OUTPUT)).encode()
    gz = aptrepo.gzip_bytes(packages)
    assert gz == aptrepo.gzip_bytes(packages)
    release = aptrepo.release_text("kiln", "amd64", {"main/binary-amd64/Packages": packages,
                                                     "main/binary-amd64/Packages.gz": gz},
                                   date="Mon, 02 Jun 2025 12:00:00 UTC")
    assert f" {hashlib.sha256(packages).hexdigest()} {len(packages):>16} " \
           "main/binary-amd64/Packages\n" in release
    assert aptrepo.release_date(release) == "Mon, 02 Jun 2025 12:00:00 UTC"
    assert "Date:" not in aptrepo.release_without_date(release)


def test_preferences_pin_each_package_at_its_version():
    assert preferences_text({"b": "2", "a": "1:1.0"}) == (
        "Package: a\nPin: version 1:1.0\nPin-Priority: 1001\n\n"
        "Package: b\nPin: version 2\nPin-Priority: 1001\n"
    )


def resolved(records_text: str) -> list[ResolvedDeb]:
    return [ResolvedDeb(url=f"http://up/{r.pool_file()}", record=r, requested_by="sku lab")
            for r in aptrepo.parse_records(records_text)]


def test_plan_fetches_pins_and_manifest_firmware_with_their_digests():
    manifest = load_manifest(ROOT / "kiln/firmware/lab.yaml")
    settings = MirrorSettings(firmware_upstream="http://10.231.0.1:8081/firmware")
    plan = build_plan(settings, {"lab": manifest}, resolved(SHOW_OUTPUT), "PUBLIC KEY\n")
    by_path = {item.path: item for item in plan.fetch}
    bios = by_path["firmware/lab-bios-1.6.2.bin"]
    assert bios.url == "http://10.231.0.1:8081/firmware/lab-bios-1.6.2.bin"
    assert bios.sha256 == manifest.firmware["bios"].blob.sha256 and bios.size == 262144
    assert "apt/pool/main/datacenter-gpu-manager-4-core_4.2.3-1kilnlab1_amd64.deb" in by_path
    assert "firmware/lab-connectx7-28.43.1014.bin" in by_path
    assert len(plan.fetch) == 2 + 3  # two debs, three blobs (the vbios has none)
    firmware_sums = nodetool.parse_sums(plan.generated["firmware/SHA256SUMS"].decode())
    assert firmware_sums["lab-bmc-1.08.00.bin"] == manifest.firmware["bmc"].blob.sha256
    pool_sums = nodetool.parse_sums(plan.generated["apt/pool/main/SHA256SUMS"].decode())
    assert len(pool_sums) == 2
    assert plan.generated["keys/kiln-mirror.asc"] == b"PUBLIC KEY\n"
    assert "apt/dists/kiln/main/binary-amd64/Packages" in plan.generated
    assert plan.release_path in plan.kept() and "apt/dists/kiln/InRelease" in plan.kept()
    assert plan.fetch_bytes == 1240 + 1190 + 3 * 262144
    assert any("Kraken" in note for note in plan.notes)


def test_plan_refuses_blobs_without_an_upstream_and_conflicting_digests():
    manifest = load_manifest(ROOT / "kiln/firmware/lab.yaml")
    with pytest.raises(PlanError, match="kiln_mirror_firmware_upstream"):
        build_plan(MirrorSettings(), {"lab": manifest}, [], "K")
    image = {"url": "http://x/a.tar", "file": "a.tar"}
    settings = MirrorSettings(images=[{**image, "sha256": "1" * 64}, {**image, "sha256": "2" * 64}])
    with pytest.raises(PlanError, match="images/a.tar: kiln_mirror_images a.tar wants sha256"):
        build_plan(settings, {}, [], "K")


# -- the real thing: dpkg-deb, gpg, apt ---------------------------------------------------

def build_deb(pool: Path, name: str, version: str, depends: str = "") -> Path:
    package = pool.parent / f"build-{name}-{version}"
    (package / "DEBIAN").mkdir(parents=True)
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
               f"Maintainer: kiln tests <tests@kiln.invalid>\n"
               f"Description: {name} for kiln's mirror tests\n")
    if depends:
        control += f"Depends: {depends}\n"
    (package / "DEBIAN/control").write_text(control)
    deb = pool / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(package), str(deb)],
                   check=True, capture_output=True)
    return deb


def upstream_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A signed upstream: app 1.0/2.0 needing lib (= same), tool needing app; key path."""
    repo = tmp_path / "upstream"
    pool = repo / "pool/main"
    pool.mkdir(parents=True)
    debs = [
        build_deb(pool, "lib", "1.0"), build_deb(pool, "lib", "2.0"),
        build_deb(pool, "app", "1.0", "lib (= 1.0)"), build_deb(pool, "app", "2.0", "lib (= 2.0)"),
        build_deb(pool, "tool", "1.0", "app"), build_deb(pool, "present", "1.0"),
    ]
    stanzas = []
    for deb in debs:
        control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                                 check=True).stdout
        data = deb.read_bytes()
        stanzas.append(control + f"Filename: pool/main/{deb.name}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    dists = repo / "dists" / SUITE
    (dists / "main/binary-amd64").mkdir(parents=True)
    (dists / "main/binary-amd64/Packages").write_bytes(packages)
    release = aptrepo.release_text(SUITE, "amd64", {"main/binary-amd64/Packages": packages},
                                   date="Mon, 02 Jun 2025 12:00:00 UTC", label="upstream")
    (dists / "Release").write_text(release)
    key = MirrorKey(tmp_path / "upstream-key")
    with key.session():
        fingerprint, _ = key.ensure()
        inrelease, detached = key.sign(fingerprint, release.encode())
        key.public_armor(fingerprint)
    (dists / "InRelease").write_bytes(inrelease)
    (dists / "Release.gpg").write_bytes(detached)
    return repo, tmp_path / "upstream-key/mirror-key.asc"


def base_status(tmp_path: Path) -> Path:
    status = tmp_path / "base-status"
    status.write_text("Package: present\nStatus: install ok installed\nPriority: optional\n"
                      "Maintainer: x <x@x>\nArchitecture: all\nVersion: 1.0\n"
                      "Description: in the base image\n")
    return status


def apt_client(tmp_path: Path, source: str) -> list[str]:
    """apt options for a client with a state of its own and `source` as its only source."""
    state = tmp_path / "client"
    for sub in ("lists/partial", "archives/partial", "parts", "prefs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(source + "\n")
    (state / "status").touch()
    options = {
        "Dir::Etc::sourcelist": state / "sources.list", "Dir::Etc::sourceparts": state / "parts",
        "Dir::Etc::preferencesparts": state / "prefs", "Dir::State::Lists": state / "lists",
        "Dir::State::status": state / "status", "Dir::Cache": state,
        "Dir::Cache::archives": state / "archives", "Debug::NoLocking": "true",
        "APT::Architecture": "amd64",
    }
    if os.geteuid() == 0:
        options["APT::Sandbox::User"] = "root"
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory):
    """Resolve the pins app=1.0, lib=1.0 (the older release) with `tool` and `present`
    against the upstream; fill and sign a mirror from that."""
    tmp_path = tmp_path_factory.mktemp("mirror")
    repo, upstream_key = upstream_repo(tmp_path)
    upstream = [AptUpstream(uri=f"file://{repo}", suite=SUITE, key=str(upstream_key))]
    resolver = AptResolver(tmp_path / "resolve", "amd64", upstream, base_status(tmp_path))
    debs = resolve_closure(resolver, {"t": {"app": "1.0", "lib": "1.0"}}, ["tool", "present"])
    settings = MirrorSettings(root=str(tmp_path / "srv"))
    key = MirrorKey(tmp_path / "mirror-key")
    with key.session():
        fingerprint, _ = key.ensure()
        public = key.public_armor(fingerprint)
        plan = build_plan(settings, {}, debs, public)
        root = Path(settings.root)
        for item in plan.fetch:
            nodetool.fetch(item.url, root / item.path, item.sha256, item.size, None)
        for path, data in plan.generated.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
        dists = root / plan.release_path.rsplit("/", 1)[0]
        release = aptrepo.release_text("kiln", "amd64", plan.apt_indexes,
                                       date="Mon, 02 Jun 2025 12:00:00 UTC")
        (dists / "Release").write_text(release)
        inrelease, detached = key.sign(fingerprint, release.encode())
        (dists / "InRelease").write_bytes(inrelease)
        (dists / "Release.gpg").write_bytes(detached)
    assert release_signed_by(public, release.encode(), inrelease, detached)
    assert not release_signed_by(public, release.encode() + b"x", inrelease, detached)
    return tmp_path, debs, root, tmp_path / "mirror-key/mirror-key.asc"


def test_apt_resolves_the_pinned_closure_without_what_the_base_has(mirrored):
    tmp_path, debs, _, _ = mirrored
    # The older pinned release, not the upstream's newest; tool (depending on any app) is
    # resolved with the pins, so it does not drag app 2.0 in; `present` is not fetched:
    # the base image has it.
    assert sorted((d.record.package, d.record.version) for d in debs) == [
        ("app", "1.0"), ("lib", "1.0"), ("tool", "1.0")]
    assert all(d.url.startswith(f"file:{tmp_path}/upstream/pool/main/") for d in debs)


def test_a_pin_the_base_image_already_has_is_still_mirrored(mirrored):
    tmp_path, _, _, _ = mirrored
    repo = tmp_path / "upstream"
    upstream = [AptUpstream(uri=f"file://{repo}", suite=SUITE,
                            key=str(tmp_path / "upstream-key/mirror-key.asc"))]
    resolver = AptResolver(tmp_path / "resolve", "amd64", upstream, tmp_path / "base-status")
    debs = resolve_closure(resolver, {"u": {"present": "1.0"}}, [])
    assert [(d.record.package, d.record.version, d.requested_by) for d in debs] == [
        ("present", "1.0", "sku u")]


def test_apt_trusts_the_signed_mirror_and_installs_from_it(mirrored):
    tmp_path, _, root, public_key = mirrored
    options = apt_client(tmp_path, f"deb [signed-by={public_key}] file://{root}/apt kiln main")
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True)
    assert update.returncode == 0 and "W:" not in update.stderr, update.stdout + update.stderr
    uris = subprocess.run(["apt-get", *options, "-qq", "install", "--print-uris", "tool"],
                          capture_output=True, text=True)
    assert uris.returncode == 0, uris.stderr
    fetched = {u.package: u for u in aptrepo.parse_print_uris(uris.stdout)}
    assert set(fetched) == {"tool", "app", "lib"}
    assert fetched["app"].version == "1.0"
    assert fetched["lib"].url == f"file:{root}/apt/pool/main/lib_1.0_all.deb"
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root / "apt/pool/main",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_apt_refuses_the_mirror_signed_by_another_key(mirrored, tmp_path: Path):
    _, _, root, _ = mirrored
    other = MirrorKey(tmp_path / "other")
    with other.session():
        other.public_armor(other.ensure()[0])
    wrong_key = tmp_path / "other/mirror-key.asc"
    options = apt_client(tmp_path, f"deb [signed-by={wrong_key}] file://{root}/apt kiln main")
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True)
    assert "NO_PUBKEY" in update.stdout + update.stderr
    uris = subprocess.run(["apt-get", *options, "-qq", "install", "--print-uris", "tool"],
                          capture_output=True, text=True)
    assert uris.returncode != 0


def test_the_mirror_key_is_made_once(tmp_path: Path):
    key = MirrorKey(tmp_path / "k")
    with key.session():
        first, made = key.ensure()
        again, made_again = key.ensure()
    assert made and not made_again and first == again
    assert oct((tmp_path / "k/gnupg").stat().st_mode & 0o777) == "0o700"


def test_init_key_exports_the_public_half_that_runs_read(tmp_path: Path):
    with pytest.raises(SigningError, match="kiln mirror init-key"):
        read_public_key(tmp_path / "state")
    fingerprint, made = init_key(tmp_path / "state")
    again, made_again = init_key(tmp_path / "state")
    assert made and not made_again and fingerprint == again
    public = read_public_key(tmp_path / "state")
    assert public.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "PRIVATE" not in public


def test_signing_without_a_key_names_init_key_and_makes_none(tmp_path: Path):
    key = MirrorKey(tmp_path / "empty")
    with key.session(), pytest.raises(SigningError, match="kiln mirror init-key"):
        key.existing_fingerprint()
