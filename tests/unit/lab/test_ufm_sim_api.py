"""The UFM simulator's REST API through Flask's test client: authentication, the
reference's paths, field names and status codes, faults seen through the API, events,
unhealthy ports and partitions."""

from __future__ import annotations

import pytest
from test_ufm_sim_helpers import (
    EVENT_FIELDS,
    LINK_FIELDS,
    PASSWORD,
    PORT_FIELDS,
    SYSTEM_FIELDS,
    UNHEALTHY_FIELDS,
    UNHEALTHY_SINGLE_FIELDS,
    USER,
    auth_header,
    make_lab,
    profile,
)

from kiln.lab.hwsim import lab_hooks
from kiln.lab.ufm_sim.app import create_app

API = "/ufmRest"


@pytest.fixture
def lab(tmp_path):
    return make_lab(tmp_path, gpu_nodes=3, service_nodes=1)


class Client:
    """Flask's test client with the lab's credentials on every request."""

    def __init__(self, lab, user=USER, password=PASSWORD):
        self.app = create_app(lab, USER, PASSWORD)
        self.http = self.app.test_client()
        self.headers = auth_header(user, password)

    def __getattr__(self, method):
        def call(path, **kwargs):
            return getattr(self.http, method)(API + path, headers=self.headers, **kwargs)
        return call


@pytest.fixture
def ufm(lab):
    client = Client(lab)
    client.get("/app/events")  # the simulator's first look: the baseline of events
    return client


def hca_guid(lab, node, k):
    return profile(lab, node)["hcas"][k]["ports"][0]["port_guid"][2:]


# -- authentication and paths ---------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    auth_header(USER, "wrong"),
    auth_header("root", PASSWORD),
    {"Authorization": "Basic !!not-base64!!"},
    {"Authorization": "Bearer " + PASSWORD},
])
@pytest.mark.parametrize("path", ["/resources/systems", "/resources/ports",
                                  "/app/unhealthy_ports", "/no/such/path"])
def test_everything_under_ufmrest_needs_the_lab_credentials(lab, headers, path):
    response = create_app(lab, USER, PASSWORD).test_client().get(API + path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert PASSWORD not in response.get_data(as_text=True)


def test_unknown_paths_are_404(ufm):
    assert ufm.get("/resources/nonsense").status_code == 404
    assert ufm.get("/app/nonsense").status_code == 404
    outside = ufm.http.get("/ufmRestV2/resources/systems", headers=ufm.headers)
    assert outside.status_code == 404
    assert ufm.post("/resources/systems", json={}).status_code == 405


# -- systems, ports, links ------------------------------------------------------------------


def test_systems_carry_the_reference_fields_and_filter_by_type(ufm, lab):
    systems = ufm.get("/resources/systems").get_json()
    assert len(systems) == 3 + 8 + 4
    for system in systems:
        assert SYSTEM_FIELDS <= set(system), SYSTEM_FIELDS - set(system)
        assert system["name"] == system["guid"] == system["system_guid"]
    hosts = ufm.get("/resources/systems?type=host").get_json()
    assert [h["system_name"] for h in hosts] == ["gpu-001", "gpu-002", "gpu-003"]
    assert hosts[0]["name"] == hca_guid(lab, "gpu-001", 0)
    assert hosts[0]["ports"] == [f"{hca_guid(lab, 'gpu-001', k)}_1" for k in range(8)]
    assert hosts[1]["ip"] == "10.231.0.12"
    switches = ufm.get("/resources/systems?type=switch").get_json()
    assert {s["model"] for s in switches} == {"MQM9700"}
    assert {s["role"] for s in switches} == {"tor", "core"}
    assert ufm.get("/resources/systems?type=toaster").status_code == 400
    one = ufm.get(f"/resources/systems/{hosts[2]['name']}?ports=true").get_json()
    assert [s["system_name"] for s in one] == ["gpu-003"]
    assert PORT_FIELDS <= set(one[0]["ports"][0])
    assert ufm.get("/resources/systems/0000000000000000").status_code == 404


def test_ports_carry_the_reference_fields_and_filters(ufm, lab):
    ports = ufm.get("/resources/ports").get_json()
    assert len(ports) == 3 * 8 * 2 + 8 * 32 * 2  # host links both ends, leaf-spine links
    for port in ports:
        assert PORT_FIELDS <= set(port), PORT_FIELDS - set(port)
        assert port["name"] == f"{port['guid']}_{port['number']}"
    host = ufm.get("/resources/systems?type=host").get_json()[0]
    mine = ufm.get(f"/resources/ports?system={host['name']}").get_json()
    assert [p["name"] for p in mine] == host["ports"]
    first = mine[0]
    assert (first["physical_state"], first["logical_state"]) == ("Link Up", "Active")
    assert (first["active_speed"], first["active_width"]) == ("NDR", "4x")
    assert first["description"] == "Computer IB Port"
    assert first["node_description"] == "gpu-001 mlx5_0"
    assert first["peer_node_name"] == "leaf-rail0" and first["peer_port_dname"] == "1/1"
    computers = ufm.get("/resources/ports?sys_type=Computer").get_json()
    assert len(computers) == 24 and {p["description"] for p in computers} == {"Computer IB Port"}
    by_name = ufm.get(f"/resources/ports/{mine[0]['name']},{mine[1]['name']}").get_json()
    assert [p["name"] for p in by_name] == host["ports"][:2]
    assert ufm.get("/resources/ports/0000000000000000_1").status_code == 404
    assert ufm.get("/resources/ports?system_name=gpu-001").status_code == 400
    assert ufm.get("/resources/ports?active=maybe").status_code == 400


def test_hca_port_down_fault_makes_the_port_inactive_and_unhealthy(ufm, lab):
    assert ufm.get("/app/unhealthy_ports").get_json() == []
    lab_hooks.apply_fault(lab, "gpu-002", "hca-port-down", {"hca": "1"})
    name = f"{hca_guid(lab, 'gpu-002', 1)}_1"
    port = ufm.get(f"/resources/ports/{name}").get_json()[0]
    assert (port["logical_state"], port["physical_state"]) == ("Down", "Polling")
    assert port["active_speed"] is None and port["severity"] == "Warning"
    active = {p["name"] for p in ufm.get("/resources/ports?active=true").get_json()}
    assert name not in active and len(active) == 3 * 8 * 2 + 8 * 32 * 2 - 2
    unhealthy = ufm.get("/app/unhealthy_ports").get_json()
    assert len(unhealthy) == 1
    entry = unhealthy[0]
    assert UNHEALTHY_FIELDS <= set(entry), UNHEALTHY_FIELDS - set(entry)
    assert entry["UnhealthyGUID"] == hca_guid(lab, "gpu-002", 1)
    assert entry["UnhealthyNode"] == "gpu-002" and entry["UnhealthyPortDname"] == "HCA-2/1"
    assert entry["PeerNode"] == "leaf-rail1" and entry["PeerPortNumber"] == 2
    single = ufm.get(f"/app/unhealthy_ports/{name}").get_json()
    assert UNHEALTHY_SINGLE_FIELDS <= set(single)
    assert single["UnhealthyNode"] == "gpu-002 mlx5_1" and isinstance(single["Condition"], list)
    host = ufm.get("/resources/systems?type=host").get_json()[1]
    assert (host["severity"], host["total_alarms"]) == ("Warning", 1)
    lab_hooks.clear_faults(lab, "gpu-002")
    assert ufm.get("/app/unhealthy_ports").get_json() == []
    assert ufm.get(f"/app/unhealthy_ports/{name}").status_code == 404


def test_rate_fault_shows_as_a_slower_link_not_an_unhealthy_port(ufm, lab):
    lab_hooks.apply_fault(lab, "gpu-003", "hca-rate", {"hca": "7", "rate": "200"})
    port = ufm.get(f"/resources/ports/{hca_guid(lab, 'gpu-003', 7)}_1").get_json()[0]
    assert (port["logical_state"], port["active_speed"], port["active_width"]) == \
        ("Active", "HDR", "4x")
    assert port["severity"] == "Warning"
    assert ufm.get("/app/unhealthy_ports").get_json() == []


def test_links_are_the_cabled_links_that_are_up(ufm, lab):
    links = ufm.get("/resources/links").get_json()
    assert len(links) == 3 * 8 + 8 * 32
    for link in links:
        assert LINK_FIELDS <= set(link), LINK_FIELDS - set(link)
    lab_hooks.apply_fault(lab, "gpu-001", "hca-port-down", {"hca": "0"})
    assert len(ufm.get("/resources/links").get_json()) == 3 * 8 + 8 * 32 - 1
    mine = ufm.get("/resources/links?system=gpu-001").get_json()
    assert len(mine) == 7 and {link["width"] for link in mine} == {"4x"}


# -- events ---------------------------------------------------------------------------------


def test_port_changes_become_link_events(ufm, lab):
    assert ufm.get("/app/events").get_json() == []  # the baseline logs nothing
    lab_hooks.apply_fault(lab, "gpu-001", "hca-port-down", {"hca": "4"})
    name = f"{hca_guid(lab, 'gpu-001', 4)}_1"
    events = ufm.get("/app/events").get_json()
    assert len(events) == 1
    down = events[0]
    assert EVENT_FIELDS <= set(down), EVENT_FIELDS - set(down)
    assert (down["event_type"], down["object_name"], down["type"]) == ("329", name, "IBPort")
    assert down["object_path"] == "Computer: gpu-001 / mlx5_4"
    assert ufm.get("/app/events").get_json() == events  # no change, no new event
    lab_hooks.clear_faults(lab, "gpu-001")
    events = ufm.get("/app/events").get_json()
    assert [e["event_type"] for e in events] == ["329", "328"]
    assert events[1]["id"] > events[0]["id"]
    assert ufm.get("/app/events?severity=Warning").get_json() == [events[0]]
    assert ufm.get(f"/app/events?object_name={name}").get_json() == events
    assert ufm.get("/app/events?object_name=none").get_json() == []
    assert ufm.get(f"/app/events/{events[1]['id']}").get_json() == events[1]
    assert ufm.delete(f"/app/events/{events[0]['id']}").status_code == 200
    assert ufm.get(f"/app/events/{events[0]['id']}").status_code == 404
    assert ufm.delete(f"/app/events/{events[0]['id']}").status_code == 404


def test_events_survive_a_simulator_restart(ufm, lab):
    lab_hooks.apply_fault(lab, "gpu-003", "hca-port-down", {"hca": "0"})
    assert len(ufm.get("/app/events").get_json()) == 1
    lab_hooks.clear_faults(lab, "gpu-003")
    restarted = Client(lab)  # same lab directory, new process state
    assert [e["event_type"] for e in restarted.get("/app/events").get_json()] == ["329", "328"]


# -- unhealthy ports marked by hand ---------------------------------------------------------


def test_marking_ports_unhealthy_and_healthy(ufm, lab):
    name = f"{hca_guid(lab, 'gpu-001', 3)}_1"
    body = {"ports": [name], "ports_policy": "UNHEALTHY", "action": "isolate"}
    assert ufm.put("/app/unhealthy_ports", json=body).status_code == 200
    entries = ufm.get("/app/unhealthy_ports").get_json()
    assert [(e["UnhealthyGUID"], e["Condition"]) for e in entries] == \
        [(hca_guid(lab, "gpu-001", 3), "MANUAL")]
    healthy = {"ports": [name], "ports_policy": "HEALTHY"}
    assert ufm.put("/app/unhealthy_ports", json=healthy).status_code == 200
    assert ufm.get("/app/unhealthy_ports").get_json() == []
    bad = [
        {"ports": ["0000000000000000_1"], "ports_policy": "UNHEALTHY"},
        {"ports": [name], "ports_policy": "SICK"},
        {"ports": [name], "ports_policy": "UNHEALTHY", "action": "explode"},
        {"ports": [], "ports_policy": "HEALTHY"},
        {"ports": [name], "ports_policy": "HEALTHY", "colour": "red"},
    ]
    for body in bad:
        assert ufm.put("/app/unhealthy_ports", json=body).status_code == 400, body


# -- partitions -----------------------------------------------------------------------------


def test_pkey_add_read_remove_round_trip(ufm, lab):
    g = [hca_guid(lab, "gpu-001", k) for k in range(3)]
    body = {"pkey": "0x0a12", "guids": g[:2], "membership": "limited", "index0": True}
    assert ufm.post("/resources/pkeys", json=body).status_code == 200
    more = {"pkey": "0xa12", "guids": ["0x" + g[2].upper()], "membership": "full"}
    assert ufm.post("/resources/pkeys/", json=more).status_code == 200
    one = ufm.get("/resources/pkeys/0x0a12?guids_data=true&qos_conf=true").get_json()
    assert one["ip_over_ib"] is True and isinstance(one["partition"], str)
    assert set(one["qos_conf"]) == {"mtu_limit", "service_level", "rate_limit"}
    assert one["guids"] == [
        {"guid": g[0], "membership": "limited", "index0": True},
        {"guid": g[1], "membership": "limited", "index0": True},
        {"guid": g[2], "membership": "full", "index0": False},
    ]
    listing = ufm.get("/resources/pkeys?guids_data=true").get_json()
    assert set(listing) == {"0x7fff", "0xa12"}
    assert len(listing["0x7fff"]["guids"]) == 3 * 8  # the default partition: every HCA port
    assert "guids" not in ufm.get("/resources/pkeys").get_json()["0xa12"]

    assert ufm.delete(f"/resources/pkeys/0xa12/guids/{g[0]},{g[2]}").status_code == 200
    left = ufm.get("/resources/pkeys/0xa12?guids_data=true").get_json()["guids"]
    assert [m["guid"] for m in left] == [g[1]]
    assert Client(lab).get("/resources/pkeys/0xa12?guids_data=true").get_json()["guids"] == left
    assert (lab / "ufm" / "pkeys.json").exists()
    assert ufm.delete("/resources/pkeys/0xa12").status_code == 200
    assert ufm.get("/resources/pkeys/0xa12").get_json() == {}  # unknown PKey: empty object
    assert ufm.delete("/resources/pkeys/0xa12").status_code == 404
    assert ufm.delete(f"/resources/pkeys/0xa12/guids/{g[1]}").status_code == 404


def test_pkey_set_hosts_and_empty_partition(ufm, lab):
    g = [hca_guid(lab, "gpu-002", k) for k in range(8)]
    assert ufm.post("/resources/pkeys", json={"pkey": "0x10", "guids": g[:4]}).status_code == 200
    replace = {"pkey": "0x10", "guids": g[4:6], "memberships": ["full", "limited"]}
    assert ufm.put("/resources/pkeys", json=replace).status_code == 200
    members = ufm.get("/resources/pkeys/0x10?guids_data=true").get_json()["guids"]
    assert [(m["guid"], m["membership"]) for m in members] == [(g[4], "full"),
                                                               (g[5], "limited")]
    hosts = {"pkey": "0x20", "hosts_names": "gpu-001,gpu-003"}
    assert ufm.post("/resources/pkeys/hosts", json=hosts).status_code == 200
    members = ufm.get("/resources/pkeys/0x20?guids_data=true").get_json()["guids"]
    assert {m["guid"] for m in members} == {
        hca_guid(lab, n, k) for n in ("gpu-001", "gpu-003") for k in range(8)
    }
    assert ufm.delete("/resources/pkeys/0x20/hosts/gpu-001").status_code == 200
    members = ufm.get("/resources/pkeys/0x20?guids_data=true").get_json()["guids"]
    assert {m["guid"] for m in members} == {hca_guid(lab, "gpu-003", k) for k in range(8)}
    empty = {"pkey": "0x30", "partition_name": "storage", "mtu_limit": 4}
    assert ufm.post("/resources/pkeys/add", json=empty).status_code == 200
    made = ufm.get("/resources/pkeys/0x30?guids_data=true&qos_conf=true").get_json()
    assert made["partition"] == "storage" and made["guids"] == []
    assert made["qos_conf"]["mtu_limit"] == 4
    assert ufm.post("/resources/pkeys/add", json=empty).status_code == 400


@pytest.mark.parametrize("body,complaint", [
    ({"pkey": "0x0a12"}, "'guids' is a required property"),
    ({"guids": ["G"]}, "'pkey' is a required property"),
    ({"pkey": "0x7fff", "guids": ["G"]}, "outside"),
    ({"pkey": "0x0", "guids": ["G"]}, "outside"),
    ({"pkey": "a12", "guids": ["G"]}, "not a hex string"),
    ({"pkey": "0x12", "guids": ["G"], "colour": "red"}, "Additional properties"),
    ({"pkey": "0x12", "guids": ["G"], "membership": "partial"}, "membership"),
    ({"pkey": "0x12", "guids": ["G"], "membership": "full", "memberships": ["full"]},
     "not both"),
    ({"pkey": "0x12", "guids": ["G"], "memberships": ["full", "full"]}, "memberships"),
    ({"pkey": "0x12", "guids": ["0123456789abcdef"]}, "not ports of this fabric"),
    ({"pkey": "0x12", "guids": ["xyz"]}, "guids[0]"),
    ({"pkey": "0x12", "guids": ["G"], "index0": "yes"}, "index0"),
])
def test_bad_pkey_requests_are_400_naming_the_field(ufm, lab, body, complaint):
    guid = hca_guid(lab, "gpu-001", 0)
    if "guids" in body:
        body = {**body, "guids": [guid if g == "G" else g for g in body["guids"]]}
    response = ufm.post("/resources/pkeys", json=body)
    assert response.status_code == 400
    assert complaint in response.get_json()["error"]
    assert set(ufm.get("/resources/pkeys").get_json()) == {"0x7fff"}


def test_pkey_body_must_be_json(ufm):
    response = ufm.post("/resources/pkeys", data="pkey=0x12", content_type="text/plain")
    assert response.status_code == 400


def test_version_probe(ufm):
    assert "ufm_release_version" in ufm.get("/app/ufm_version").get_json()
