"""The mirror's settings, read from pyinfra host data (group data or the lab inventory).

Every key is `kiln_mirror_<field>`; a bad value is reported as `host data kiln_mirror_<field>
…: message`. Paths marked "controller" are read on the machine running kiln.

    kiln_mirror_root            /srv/kiln-mirror    the tree nginx serves, on service nodes
    kiln_mirror_state           state/mirror        controller: signing key, apt resolver state
    kiln_mirror_host            (first service node) the address clients reach the mirror at
    kiln_mirror_http_port       80                  read-only HTTP (apt, pip, firmware: sendfile)
    kiln_mirror_https_port      443                 TLS: reads, and uploads with basic auth
    kiln_mirror_tls_cert/_key   controller paths of the service node's certificate and key
    kiln_mirror_ca              controller path of the CA bundle clients check that cert with
    kiln_mirror_apt_upstream    [{uri, suite, components, key (controller path)}]
    kiln_mirror_firmware_upstream  URL the manifests' firmware blobs are fetched from
    kiln_mirror_base_status     controller path: dpkg status of the nodes' base OS image
    kiln_mirror_os_packages     Debian packages roles install besides the manifests' pins
    kiln_mirror_images          [{url, sha256, file, size?}] container image archives
    kiln_mirror_wheels          [{url, sha256, file, size?}] Python wheels/sdists for pypi/
    kiln_kraken_images          {component: {ref, url, sha256, file, size?}} Kraken's image
                                archives (roles/kraken), fetched into images/ like the above
    kiln_mirror_arch            amd64               the nodes' dpkg architecture
    kiln_mirror_suite           kiln                the mirror's apt suite

The manifests whose pins the mirror carries are each node's own: its node context's
(kiln.core.context) kiln_firmware_dir/<kiln_sku>.yaml, kiln's shipped firmware/ by default.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator

from kiln.core.hostdata import settings_from_host_data
from kiln.core.models import Strict
from kiln.core.outcomes import not_set

PREFIX = "kiln_mirror_"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")



class AptUpstream(Strict):
    """One upstream apt source: `deb [signed-by=key] uri suite components…`."""

    uri: str
    suite: str
    components: list[str] = ["main"]
    key: str  # controller path of the armored or binary public key the source is signed with

    @field_validator("uri")
    @classmethod
    def _url(cls, value: str) -> str:
        # file:// is for an archive both the controller and the service node see at one path.
        if not value.startswith(("http://", "https://", "file:///")):
            raise ValueError(f"{value!r} is not an http(s) or file:/// URL")
        return value.rstrip("/")


class UpstreamFile(Strict):
    """A file to mirror as is: where it comes from and what it must hash to."""

    url: str
    sha256: str
    file: str
    size: Annotated[int, Field(gt=0)] | None = None

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value

    @field_validator("file")
    @classmethod
    def _plain(cls, value: str) -> str:
        if "/" in value or value in ("", ".", "..") or value.startswith("."):
            raise ValueError("a plain file name, no directory")
        return value


class ImageArchive(UpstreamFile):
    """A container image archive (`docker save` / OCI archive) and the reference it loads as."""

    ref: str

    @field_validator("ref")
    @classmethod
    def _reference(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value) or ":" not in value.rsplit("/", 1)[-1]:
            raise ValueError(f"{value!r} is not an image reference with a tag (name:tag)")
        return value


class MirrorSettings(Strict):
    root: str = "/srv/kiln-mirror"
    state: str = "state/mirror"
    host: str | None = None
    http_port: Annotated[int, Field(ge=1, le=65535)] = 80
    https_port: Annotated[int, Field(ge=1, le=65535)] = 443
    tls_cert: str | None = None
    tls_key: str | None = None
    ca: str | None = None
    apt_upstream: list[AptUpstream] = []
    firmware_upstream: str | None = None
    base_status: str | None = None
    os_packages: list[str] = []
    images: list[UpstreamFile] = []
    wheels: list[UpstreamFile] = []
    kraken_images: dict[str, ImageArchive] = {}
    arch: str = "amd64"
    suite: str = "kiln"

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError("an absolute directory other than /")
        return value.rstrip("/")

    @field_validator("firmware_upstream")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value if value.endswith("/") else value + "/"

    def http_url(self, host: str) -> str:
        port = "" if self.http_port == 80 else f":{self.http_port}"
        return f"http://{host}{port}/"

    def https_url(self, host: str) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{host}{port}/"


# Fields read from another role's keys: the mirror fetches what those roles pin.
_FOREIGN_KEYS = {"kraken_images": "kiln_kraken_images"}


def data_key(field: str) -> str:
    return _FOREIGN_KEYS.get(field, PREFIX + field)


def settings_from_data(data: Any) -> MirrorSettings:
    """Build the settings from a host's data (anything with .get); every problem reported."""
    return settings_from_host_data(MirrorSettings, data, data_key)


def require(settings: MirrorSettings, *fields: str) -> list[str]:
    """Problems for fields a step needs that are not set, each naming its data key."""
    return not_set([data_key(field) for field in fields
                    if getattr(settings, field) in (None, [])], "roles/mirror/settings.py")
