"""The mirror's pure parts: SHA256SUMS, PEP 503 pages, tree paths, settings, config files."""

from __future__ import annotations

import hashlib
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kiln.core.errors import ValidationFailed
from kiln.roles.mirror import layout, render
from kiln.roles.mirror.settings import settings_from_data


def test_sums_text_is_what_sha256sum_check_reads(tmp_path: Path):
    (tmp_path / "b.bin").write_bytes(b"bee")
    (tmp_path / "a.bin").write_bytes(b"ay")
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    text = layout.sums_text(digests)
    assert text.splitlines()[0].endswith("  a.bin")
    (tmp_path / "SHA256SUMS").write_text(text)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "a.bin").write_bytes(b"ax")
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path,
                          capture_output=True).returncode != 0


def test_directory_sums_one_file_per_directory_never_listing_itself():
    sums = layout.directory_sums({
        "firmware/x.bin": "1" * 64,
        "firmware/y.bin": "2" * 64,
        "pypi/packages/foo/foo-1.0-py3-none-any.whl": "3" * 64,
        "firmware/SHA256SUMS": "4" * 64,
    })
    assert set(sums) == {"firmware/SHA256SUMS", "pypi/packages/foo/SHA256SUMS"}
    assert sums["firmware/SHA256SUMS"] == f"{'1' * 64}  x.bin\n{'2' * 64}  y.bin\n"


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self._href = dict(attrs)["href"]

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((self._href, data))
            self._href = None


def links(html: str) -> list[tuple[str, str]]:
    parser = Links()
    parser.feed(html)
    return parser.links


def test_pep503_root_lists_normalized_projects_and_pages_carry_sha256():
    files = {
        "Foo_Bar-1.0-py3-none-any.whl": "a" * 64,
        "foo.bar-1.1.tar.gz": "b" * 64,
        "zlib_ng-0.5-1-cp311-cp311-manylinux_2_17_x86_64.whl": "c" * 64,
    }
    pages = layout.pep503_pages(files)
    assert set(pages) == {
        "pypi/simple/index.html", "pypi/simple/foo-bar/index.html",
        "pypi/simple/zlib-ng/index.html",
    }
    assert links(pages["pypi/simple/index.html"]) == [("foo-bar/", "foo-bar"),
                                                      ("zlib-ng/", "zlib-ng")]
    project = links(pages["pypi/simple/foo-bar/index.html"])
    assert project == [
        (f"../../packages/foo-bar/Foo_Bar-1.0-py3-none-any.whl#sha256={'a' * 64}",
         "Foo_Bar-1.0-py3-none-any.whl"),
        (f"../../packages/foo-bar/foo.bar-1.1.tar.gz#sha256={'b' * 64}", "foo.bar-1.1.tar.gz"),
    ]
    # where the link points is where the plan puts the file
    assert layout.pypi_path("Foo_Bar-1.0-py3-none-any.whl") == \
        "pypi/packages/foo-bar/Foo_Bar-1.0-py3-none-any.whl"
    assert 'name="pypi:repository-version" content="1.0"' in pages["pypi/simple/index.html"]


def test_an_empty_index_is_a_valid_root_page():
    pages = layout.pep503_pages({})
    assert list(pages) == ["pypi/simple/index.html"]
    assert links(pages["pypi/simple/index.html"]) == []


@pytest.mark.parametrize("name", ["notawheel.whl", "README.md", "x.tar.bz2"])
def test_unknown_python_file_names_are_refused(name: str):
    with pytest.raises(layout.LayoutError, match=re.escape(name)):
        layout.project_of(name)


@pytest.mark.parametrize("path", ["../etc/passwd", "/srv/x", "firmware/../../x", "other/x.bin"])
def test_fetch_items_stay_inside_the_tree(path: str):
    with pytest.raises(layout.LayoutError, match="not in the tree"):
        layout.FetchItem(url="http://x/", path=path, sha256="0" * 64, source="test")


def test_fetch_item_digest_must_be_sha256_hex():
    with pytest.raises(layout.LayoutError, match="sku lab: firmware bios"):
        layout.FetchItem(url="http://x/", path="firmware/x", sha256="abc",
                         source="sku lab: firmware bios")


def test_settings_defaults_and_errors_name_the_data_key():
    settings = settings_from_data({"kiln_mirror_suite": "site"})
    assert settings.root == "/srv/kiln-mirror" and settings.suite == "site"
    assert settings.http_url("10.0.0.5") == "http://10.0.0.5/"
    assert settings_from_data({"kiln_mirror_https_port": 8443}).https_url("m") == "https://m:8443/"
    with pytest.raises(ValidationFailed) as failed:
        settings_from_data({
            "kiln_mirror_root": "relative/dir",
            "kiln_mirror_apt_upstream": [{"uri": "ftp://x", "suite": "s", "key": "k"}],
            "kiln_mirror_images": [{"url": "http://x/i.tar", "sha256": "XYZ", "file": "a/b"}],
        })
    problems = "\n".join(failed.value.problems)
    assert "host data kiln_mirror_root:" in problems
    assert "host data kiln_mirror_apt_upstream[0].uri:" in problems
    assert "host data kiln_mirror_images[0].sha256:" in problems
    assert "host data kiln_mirror_images[0].file:" in problems


def test_nginx_site_reads_only_on_http_and_writes_only_with_auth_over_tls():
    site = render.nginx_site("/srv/kiln-mirror", 80, 443)
    http, tls = site.split("\nserver {")[1:]
    assert "listen 80 default_server;" in http and "ssl" not in http
    assert "sendfile on;" in http
    assert re.search(r"limit_except GET \{\s*deny all;\s*\}", http)
    assert "dav_methods" not in http and "auth_basic" not in http
    assert "listen 443 ssl default_server;" in tls
    assert f"ssl_certificate {render.TLS_CERT};" in tls
    assert f"ssl_certificate_key {render.TLS_KEY};" in tls
    # uploads: images/ and files/ only, each behind basic auth for everything but GET/HEAD
    for directory in ("images", "files"):
        block = tls.split(f"location /{directory}/ {{", 1)[1].split("\n    }\n", 1)[0]
        assert "dav_methods PUT DELETE;" in block
        assert re.search(r"limit_except GET \{\s*auth_basic \"kiln mirror\";\s*"
                         rf"auth_basic_user_file {re.escape(render.HTPASSWD)};", block)
    assert "location /apt/" not in tls and tls.count("dav_methods") == 2
    assert "client_body_temp_path /srv/kiln-mirror/.upload-tmp;" in tls
    # braces balance: nginx would refuse the file otherwise
    assert site.count("{") == site.count("}")


def test_client_configuration_points_at_the_mirror():
    assert render.apt_sources("http://10.231.0.19/", "kiln") == (
        "# kiln's local file mirror (roles/mirror): what the cluster's manifests pin, and its "
        "closure.\n"
        "deb [signed-by=/etc/apt/keyrings/kiln-mirror.asc] http://10.231.0.19/apt kiln main\n"
    )
    pip = render.pip_conf("https://10.231.0.19/", render.CLIENT_CA)
    assert "[global]\nindex-url = https://10.231.0.19/pypi/simple/\n" in pip
    assert f"cert = {render.CLIENT_CA}\n" in pip
    assert "cert" not in render.pip_conf("https://m/", None)


def test_htpasswd_is_glibc_sha512_crypt():
    # The SHA-crypt specification's own test vector: what glibc's crypt(), and so nginx's
    # auth_basic, computes for this password and salt.
    assert render.crypt_sha512("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCo"
        "EOfaS35inz1"
    )
    line = render.htpasswd_line("kiln", "s3cret")
    assert line.startswith("kiln:$6$") and line.endswith("\n")
    assert render.htpasswd_matches(line, "kiln", "s3cret")
    assert not render.htpasswd_matches(line, "kiln", "other")
    assert not render.htpasswd_matches(line, "admin", "s3cret")
    assert not render.htpasswd_matches(None, "kiln", "s3cret")
    with pytest.raises(render.HtpasswdError):
        render.htpasswd_line("a:b", "x")


def test_the_fill_carries_what_the_site_firmware_directory_pins(tmp_path: Path):
    """The mirror fetches the blobs of each node's own manifest (its node context's
    kiln_firmware_dir), not those of kiln's shipped manifests."""
    from types import SimpleNamespace

    from site_manifests import site_firmware_dir

    from kiln.core.errors import KilnError
    from kiln.roles.mirror import inventory_manifests
    from kiln.roles.mirror.plan import firmware_items
    from kiln.roles.mirror.settings import MirrorSettings

    def change(document: dict) -> None:
        document["firmware"]["bios"]["version"] = "1.7.0"
        document["firmware"]["bios"]["blob"]["file"] = "site-bios-1.7.0.bin"

    site = site_firmware_dir(tmp_path, change)
    nodes = [SimpleNamespace(name=name, data={"kiln_sku": "lab", "kiln_firmware_dir": str(site)})
             for name in ("gpu-001", "gpu-002")]
    nodes.append(SimpleNamespace(name="svc-001", data={}))  # no SKU: nothing of its own
    manifests = inventory_manifests(nodes)
    assert list(manifests) == ["lab"] and manifests["lab"].firmware["bios"].version == "1.7.0"
    settings = MirrorSettings(firmware_upstream="https://vendor.example/fw/")
    paths = {item.path for item in firmware_items(settings, manifests)}
    assert "firmware/site-bios-1.7.0.bin" in paths and "firmware/lab-bios-1.6.2.bin" not in paths
    shipped = inventory_manifests([SimpleNamespace(name="gpu-003", data={"kiln_sku": "lab"})])
    assert shipped["lab"].firmware["bios"].version == "1.6.2"
    nodes.append(SimpleNamespace(name="gpu-003", data={"kiln_sku": "lab"}))
    with pytest.raises(KilnError, match=rf"SKU lab has two manifests in the inventory: "
                                        rf"{site}/lab.yaml and .*/kiln/firmware/lab.yaml "
                                        r"\(node gpu-003\)"):
        inventory_manifests(nodes)
