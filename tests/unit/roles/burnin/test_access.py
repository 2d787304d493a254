"""root's authorized_keys with the burn-in's key on exactly one line (kiln.roles.burnin.access).
A key's base64 holds '+', which pyinfra's files.line (grep, basic syntax) never matched."""

from kiln.roles.burnin.access import authorized_keys_text

PLUS_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN+u9GiLBGfVHY4NFCxSb3GH/x kiln-burnin"


def test_the_key_is_added_once_and_then_left_alone():
    other = "ssh-rsa AAAAB3Nza admin@jump"
    added = authorized_keys_text(other + "\n", PLUS_KEY)
    assert added == f"{other}\n{PLUS_KEY}\n"
    assert authorized_keys_text(added, PLUS_KEY) is None  # '+' in the key: found as text
    assert authorized_keys_text(None, PLUS_KEY) == PLUS_KEY + "\n"


def test_copies_an_earlier_kiln_appended_are_folded_into_one():
    other = "ssh-rsa AAAAB3Nza admin@jump"
    text = f"{PLUS_KEY}\n{other}\n{PLUS_KEY}\n{PLUS_KEY}\n"
    assert authorized_keys_text(text, PLUS_KEY) == f"{other}\n{PLUS_KEY}\n"
