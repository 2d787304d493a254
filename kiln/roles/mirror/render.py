"""Configuration files the mirror role writes, rendered from templates/mirror/."""

from __future__ import annotations

import secrets
import string
import subprocess

import jinja2

from kiln.core.errors import KilnError
from kiln.core.paths import TEMPLATES_DIR
from kiln.roles.mirror.layout import UPLOADS

TEMPLATES = TEMPLATES_DIR / "mirror"
_SALT_ALPHABET = string.ascii_letters + string.digits + "./"

# Where things live on nodes.
SITE = "/etc/nginx/sites-available/kiln-mirror"
SITE_ENABLED = "/etc/nginx/sites-enabled/kiln-mirror"
CONFIG_DIR = "/etc/kiln-mirror"
HTPASSWD = f"{CONFIG_DIR}/htpasswd"
TLS_CERT = f"{CONFIG_DIR}/tls/mirror.pem"
TLS_KEY = f"{CONFIG_DIR}/tls/mirror.key"
KEYRING = "/etc/apt/keyrings/kiln-mirror.asc"
APT_SOURCES = "/etc/apt/sources.list.d/kiln-mirror.list"
PIP_CONF = "/etc/pip.conf"
CLIENT_CA = "/etc/kiln/mirror-ca.pem"
NODE_TOOL = "/usr/local/bin/kiln-mirror"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # nginx and INI files, not HTML
    )


def render(template: str, **values: object) -> str:
    return _environment().get_template(template).render(**values)


def nginx_site(root: str, http_port: int, https_port: int) -> str:
    return render(
        "nginx-site.conf.j2",
        root=root,
        http_port=http_port,
        https_port=https_port,
        tls_cert=TLS_CERT,
        tls_key=TLS_KEY,
        htpasswd=HTPASSWD,
        upload_dirs=list(UPLOADS),
    )


def apt_sources(mirror_url: str, suite: str) -> str:
    return render("apt-sources.list.j2", mirror_url=mirror_url, suite=suite, keyring=KEYRING)


def pip_conf(mirror_url: str, ca: str | None) -> str:
    return render("pip.conf.j2", mirror_url=mirror_url, ca=ca)


class HtpasswdError(KilnError):
    pass


def crypt_sha512(password: str, salt: str | None = None) -> str:
    """`$6$salt$…` (glibc crypt SHA-512), what nginx's auth_basic checks; made by openssl,
    the password on stdin so it is never on a command line."""
    salt = salt or "".join(secrets.choice(_SALT_ALPHABET) for _ in range(16))
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password + "\n", capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise HtpasswdError(f"openssl passwd -6 failed: {result.stderr.strip()}")
    return result.stdout.strip()


def htpasswd_line(username: str, password: str, salt: str | None = None) -> str:
    if ":" in username or not username:
        raise HtpasswdError("mirror username must be non-empty and hold no ':'")
    return f"{username}:{crypt_sha512(password, salt)}\n"


def htpasswd_matches(current: str | None, username: str, password: str) -> bool:
    """Whether an existing htpasswd file is exactly this one user with this password (its
    salt reused): then nothing is rewritten, and a second run changes nothing."""
    if not current:
        return False
    lines = [line for line in current.splitlines() if line.strip()]
    if len(lines) != 1:
        return False
    user, _, hashed = lines[0].partition(":")
    parts = hashed.split("$")
    if user != username or len(parts) != 4 or parts[1] != "6":
        return False
    return crypt_sha512(password, parts[2]) == hashed
