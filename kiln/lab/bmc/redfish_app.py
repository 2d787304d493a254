"""sushy-tools' emulator application with a lab node behind it.

The HTTP layer is sushy-tools' own Flask application (`sushy_tools.emulator.main.app`): its
routes, its htpasswd basic auth, its TLS. What the lab adds, and why:

- the systems driver: sushy-tools chooses among its own drivers (libvirt, nova, ironic,
  fake) from its configuration and has no setting for another, so `LabEmulator`, a subclass
  of its `Application`, answers `systems` with the lab's `LabSystemsDriver`;
- `UpdateService/FirmwareInventory` (the template links it; sushy-tools has no route) with
  the node's BIOS and BMC, from its hardware profile;
- SimpleUpdate: sushy-tools' handler ignores ImageURI, bumps the BIOS minor version and
  points at a fixed task. The lab's fetches the image, verifies it and stages it as a
  Redfish Task (lab/bmc/redfish_tasks.py), served under `TaskService/Tasks` (also the
  fixed task's URI, which sushy-tools would otherwise always answer Completed);
- `Boot.BootSourceOverrideEnabled`: sushy-tools' system resource always says Continuous and
  ignores what a PATCH sends; the lab keeps it (a Once override is used up by the next
  boot), so the system resource is wrapped to store and show it;
- the BIOS setup: sushy-tools serves `Systems/<id>/BIOS` and takes PATCHes of
  `BIOS/Settings` through the driver (lab/bmc/bios.py: attributes in the node's profile,
  settings staged for its next boot). sushy-tools' Settings resource shows the attributes
  in effect; the lab's shows those the next boot will have, and its Bios resource says
  settings apply OnReset only (`@Redfish.Settings` SupportedApplyTimes; a PATCH asking for
  another ApplyTime is a 400);
- the Manager's `FirmwareVersion` is the node's BMC version (sushy-tools says "1.00");
- the system event log (sushy-tools has no LogServices): `Systems/<id>/LogServices/SEL`, a
  LogService whose Entries are the node's SEL store (`<lab>/bmc/<node>/sel.json`, written by
  `kiln lab fault NODE bmc-event`: lab/sel.py), read at every request, with
  `LogService.ClearLog`; the system resource links it (`LogServices`);
- `Manager.Reset` (sushy-tools has none), GracefulRestart or ForceRestart: the BMC
  restarts, so a staged BMC image becomes its running version (lab/bmc/firmware.py
  `activate_staged_bmc`; BIOS images wait for the system's reset), and for
  `RESTART_SECONDS` the service root and every authenticated request are answered 503 with
  Retry-After, as a BMC's web server does while its firmware comes up.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import flask
import requests
from sushy_tools import error
from sushy_tools.emulator import main as emulator

from kiln.lab import sel
from kiln.lab.bmc import firmware
from kiln.lab.bmc.redfish_driver import OVERRIDE_ENABLED, LabSystemsDriver
from kiln.lab.bmc.redfish_tasks import TASKS_PATH, Progress, Task, TaskFailed, TaskList, message

INVENTORY_PATH = "/redfish/v1/UpdateService/FirmwareInventory"
SOFTWARE_PATH = "/redfish/v1/UpdateService/SoftwareInventory"
TRANSFER_PROTOCOLS = ("HTTP", "HTTPS")
MAX_IMAGE_BYTES = 64 * 1024 * 1024
INVENTORY_NAMES = {"bios": "System BIOS", "bmc": "Baseboard Management Controller"}
MANAGER_RESET_TYPES = ("GracefulRestart", "ForceRestart")
RESTART_SECONDS = 1.5

# When a BIOS setting PATCHed to Bios/Settings takes effect: the node's next boot.
BIOS_APPLY_TIMES = ("OnReset",)

ACTIVATED_BY = {"bios": "system reset (ComputerSystem.Reset)",
                "bmc": "BMC restart (Manager.Reset)"}

Fetch = Callable[[str], bytes]


class LabEmulator(emulator.Application):
    """sushy-tools' Application whose systems are one lab node (see the module docstring)."""

    lab_driver: LabSystemsDriver | None = None

    @property
    def systems(self) -> LabSystemsDriver:
        if self.lab_driver is None:
            raise error.FishyError("the lab BMC has no node behind it (install() not called)")
        return self.lab_driver


@dataclass
class UpdateSettings:
    fetch: Fetch
    seconds: float  # how long writing an image to flash takes


def fetch_over_http(ca_bundle: str | None = None) -> Fetch:
    """The BMC's image download: HTTP(S) GET, HTTPS checked against `ca_bundle`."""

    def fetch(uri: str) -> bytes:
        with requests.get(uri, timeout=30, stream=True,
                          verify=ca_bundle if ca_bundle else True) as response:
            response.raise_for_status()
            data = b""
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise ValueError(f"larger than {MAX_IMAGE_BYTES} bytes")
            return data

    return fetch


def install(
    driver: LabSystemsDriver, update: UpdateSettings, app: flask.Flask | None = None
) -> LabEmulator:
    """Put `driver` behind sushy-tools' application and add the lab's routes (once)."""
    app = app or emulator.app
    if not isinstance(app, LabEmulator):
        app.__class__ = LabEmulator
    app.__dict__.pop("_cache", None)  # sushy-tools' memoized managers etc. follow the driver
    app.lab_driver = driver
    app.lab_tasks = TaskList()
    app.lab_update = update
    app.lab_restarting_until = 0.0
    if "lab_firmware_inventory" not in app.view_functions:
        _add_routes(app)
    return app


def _answer_while_restarting() -> flask.Response | None:
    """Flask before-request hook: while the BMC restarts, every request gets 503."""
    left = getattr(_app(), "lab_restarting_until", 0.0) - time.monotonic()
    if left <= 0:
        return None
    return _json({"error": {"code": "Base.1.8.ServiceTemporarilyUnavailable",
                            "message": "The BMC is restarting; retry later."}},
                 status=503, headers={"Retry-After": str(max(1, round(left)))})


def _add_routes(app: flask.Flask) -> None:
    app.add_url_rule(INVENTORY_PATH, "lab_firmware_inventory", firmware_inventory)
    app.add_url_rule(f"{INVENTORY_PATH}/<member>", "lab_firmware_item", firmware_item)
    app.add_url_rule(SOFTWARE_PATH, "lab_software_inventory", software_inventory)
    app.add_url_rule(TASKS_PATH, "lab_tasks", task_collection)
    app.add_url_rule(f"{TASKS_PATH}/<task_id>", "lab_task", task_resource)
    # The fixed task 42 has a route of its own, which wins over <task_id>: answer it too.
    app.view_functions["simple_task"] = lambda: task_resource("42")
    app.view_functions["UpdateService.update_service_simple_update"] = simple_update
    app.view_functions["system_resource"] = _with_boot_override(
        app.view_functions["system_resource"]
    )
    app.view_functions["manager_resource"] = _with_bmc_version(
        app.view_functions["manager_resource"]
    )
    app.view_functions["bios"] = _with_apply_times(app.view_functions["bios"])
    app.view_functions["bios_settings"] = _with_pending_bios(app.view_functions["bios_settings"])
    app.add_url_rule("/redfish/v1/Managers/<identity>/Actions/Manager.Reset",
                     "lab_manager_reset", manager_reset, methods=["POST"])
    app.view_functions["system_resource"] = _with_log_services(
        app.view_functions["system_resource"]
    )
    logs = "/redfish/v1/Systems/<identity>/LogServices"
    app.add_url_rule(logs, "lab_log_services", log_services)
    app.add_url_rule(f"{logs}/<service>", "lab_log_service", log_service)
    app.add_url_rule(f"{logs}/<service>/Entries", "lab_log_entries", log_entries)
    app.add_url_rule(f"{logs}/<service>/Entries/<entry_id>", "lab_log_entry", log_entry)
    app.add_url_rule(f"{logs}/<service>/Actions/LogService.ClearLog", "lab_log_clear",
                     clear_log, methods=["POST"])
    # Into Flask's list directly: `before_request` refuses an app that has served requests
    # (sushy-tools' app is one per process; tests install it after it has served others).
    # sushy-tools' basic auth is WSGI middleware around Flask and is re-applied by its
    # `configure` unless it is outermost, so the hook goes inside Flask, not around it.
    app.before_request_funcs.setdefault(None, []).insert(0, _answer_while_restarting)


def _json(document: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(document, indent=2), status=status, headers=headers,
                          content_type="application/json")


def _app() -> Any:
    return flask.current_app


def _system_id() -> str:
    driver = _app().systems
    return driver.systems[0]


# -- firmware inventory -----------------------------------------------------------------


def firmware_inventory() -> flask.Response:
    members = [{"@odata.id": f"{INVENTORY_PATH}/{firmware.INVENTORY_IDS[c]}"}
               for c in firmware.UPDATABLE]
    return _json({
        "@odata.type": "#SoftwareInventoryCollection.SoftwareInventoryCollection",
        "@odata.id": INVENTORY_PATH,
        "Name": "Firmware Inventory Collection",
        "Members@odata.count": len(members),
        "Members": members,
    })


def firmware_item(member: str) -> flask.Response:
    by_id = {item_id: c for c, item_id in firmware.INVENTORY_IDS.items()}
    if member not in by_id:
        raise error.NotFound(f"no firmware inventory item {member!r} "
                             f"(items: {', '.join(by_id)})")
    component = by_id[member]
    system = _system_id()
    version = _app().systems.get_versions(system)[firmware.VERSION_KEYS[component]]
    related = f"/redfish/v1/Systems/{system}" if component == "bios" \
        else f"/redfish/v1/Managers/{system}"
    return _json({
        "@odata.type": "#SoftwareInventory.v1_10_0.SoftwareInventory",
        "@odata.id": f"{INVENTORY_PATH}/{member}",
        "Id": member,
        "Name": INVENTORY_NAMES[component],
        "Version": version,
        "Updateable": True,
        "SoftwareId": f"lab-{component}",
        "Manufacturer": "kiln lab (simulated)",
        "Status": {"State": "Enabled", "Health": "OK"},
        "RelatedItem": [{"@odata.id": related}],
    })


def software_inventory() -> flask.Response:
    return _json({
        "@odata.type": "#SoftwareInventoryCollection.SoftwareInventoryCollection",
        "@odata.id": SOFTWARE_PATH,
        "Name": "Software Inventory Collection",
        "Members@odata.count": 0,
        "Members": [],
    })


# -- tasks ------------------------------------------------------------------------------


def task_collection() -> flask.Response:
    members = [{"@odata.id": f"{TASKS_PATH}/{task_id}"} for task_id in _app().lab_tasks.ids()]
    return _json({
        "@odata.type": "#TaskCollection.TaskCollection",
        "@odata.id": TASKS_PATH,
        "Name": "Task Collection",
        "Members@odata.count": len(members),
        "Members": members,
    })


def task_resource(task_id: str) -> flask.Response:
    task = _app().lab_tasks.get(task_id)
    if task is None:
        raise error.NotFound(f"no task {task_id!r}")
    return _task_response(task)


def _task_response(task: Task) -> flask.Response:
    if task.ended:
        return _json(task.resource())
    # Retry-After as an HTTP date: the sushy client sleeps a digits-only value as a string.
    retry = formatdate(time.time() + 1, usegmt=True)
    return _json(task.resource(), status=202, headers={"Location": task.uri, "Retry-After": retry})


# -- SimpleUpdate -----------------------------------------------------------------------


def simple_update() -> flask.Response:
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict):
        raise error.BadRequest("SimpleUpdate: the request body must be a JSON object")
    image_uri = _image_uri(body)
    wanted = _target_components(body.get("Targets"))
    app = _app()
    job = update_job(app.systems, _system_id(), image_uri, wanted, app.lab_update)
    name = os.path.basename(urlsplit(image_uri).path) or image_uri
    task = app.lab_tasks.run(f"SimpleUpdate {name}", job)
    return _task_response(app.lab_tasks.get(task.id))


def _image_uri(body: dict[str, Any]) -> str:
    image_uri = body.get("ImageURI")
    if not isinstance(image_uri, str) or not image_uri:
        raise error.BadRequest("SimpleUpdate: ImageURI is required (a http:// or https:// URI)")
    scheme = urlsplit(image_uri).scheme.upper()
    if scheme not in TRANSFER_PROTOCOLS:
        raise error.BadRequest(f"SimpleUpdate: ImageURI {image_uri!r}: the scheme must be "
                               f"one of {', '.join(p.lower() for p in TRANSFER_PROTOCOLS)}")
    protocol = body.get("TransferProtocol")
    if protocol is not None and protocol != scheme:
        raise error.BadRequest(f"SimpleUpdate: TransferProtocol {protocol!r} does not match "
                               f"ImageURI {image_uri!r}")
    return image_uri


def _target_components(targets: Any) -> set[str]:
    """Which components the client means (all when it names no Targets)."""
    if targets is None or targets == []:
        return set(firmware.UPDATABLE)
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise error.BadRequest("SimpleUpdate: Targets must be a list of resource URIs")
    system = _system_id()
    known = {}
    for identity in (system, _app().systems.name(system)):  # UUID, or the node name alias
        known[f"/redfish/v1/Systems/{identity}"] = "bios"
        known[f"/redfish/v1/Managers/{identity}"] = "bmc"
    known.update({f"{INVENTORY_PATH}/{item}": c for c, item in firmware.INVENTORY_IDS.items()})
    wanted = set()
    for target in targets:
        component = known.get(target.rstrip("/"))
        if component is None:
            raise error.BadRequest(f"SimpleUpdate: target {target!r} is not updatable here "
                                   f"(targets: {', '.join(sorted(known))})")
        wanted.add(component)
    return wanted


def update_job(driver: LabSystemsDriver, system: str, image_uri: str, wanted: set[str],
               update: UpdateSettings) -> Callable[[Progress], list[dict[str, Any]]]:
    """The work of one SimpleUpdate: download, verify, write to flash (staged for reset)."""
    name = os.path.basename(urlsplit(image_uri).path) or image_uri

    def job(progress: Progress) -> list[dict[str, Any]]:
        progress(5, message("Update.1.0.TransferringToComponent",
                            f"Transferring image '{name}' to the BMC.", [name, "BMC"]))
        try:
            data = update.fetch(image_uri)
        except (requests.RequestException, ValueError) as exc:
            raise TaskFailed(message("Update.1.0.TransferFailed",
                                     f"Transfer of image '{image_uri}' failed: {exc}",
                                     [image_uri, "BMC"], "Critical")) from None
        progress(30, message("Update.1.0.VerifyingAtComponent",
                             f"Verifying image '{name}'.", [name, "BMC"]))
        component = _verified_component(data, name, image_uri, wanted)
        item = firmware.INVENTORY_IDS[component]
        _write_flash(progress, update.seconds, name, item)
        driver.stage_image(system, component, data)
        return [
            message("Update.1.0.UpdateSuccessful",
                    f"Device '{item}' successfully updated with image '{name}'.", [item, name]),
            message("Update.1.0.AwaitToActivate",
                    f"Image '{name}' on '{item}' is activated at the next "
                    f"{ACTIVATED_BY[component]}.", [name, item]),
        ]

    return job


def _verified_component(data: bytes, name: str, image_uri: str, wanted: set[str]) -> str:
    try:
        component, _version = firmware.identify_image(data, name)
    except firmware.ImageRejected as exc:
        raise TaskFailed(message("Update.1.0.VerificationFailed", str(exc),
                                 [name, image_uri], "Critical")) from None
    if component not in wanted:
        item = firmware.INVENTORY_IDS[component]
        targets = ", ".join(sorted(firmware.INVENTORY_IDS[c] for c in wanted))
        raise TaskFailed(message(
            "Update.1.0.VerificationFailed",
            f"{name}: a {item} image, but the request's Targets are {targets}",
            [name, image_uri], "Critical"))
    return component


def _write_flash(progress: Progress, seconds: float, name: str, item: str) -> None:
    progress(40, message("Update.1.0.InstallingOnComponent",
                         f"Installing image '{name}' on '{item}'.", [name, item]))
    steps = 5
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        progress(40 + step * 55 // steps, None)


# -- wrapped sushy-tools views ------------------------------------------------------------


def _with_boot_override(original: Callable[..., Any]) -> Callable[..., Any]:
    def system_resource(identity: str) -> Any:
        driver = _app().systems
        if flask.request.method == "PATCH":
            return _patch_boot(original, driver, identity)
        response = original(identity)
        if response.status_code == 200:
            document = json.loads(response.get_data())
            boot = document.setdefault("Boot", {})
            boot["BootSourceOverrideEnabled"] = driver.get_boot_override(identity)
            boot["BootSourceOverrideEnabled@Redfish.AllowableValues"] = list(OVERRIDE_ENABLED)
            response.set_data(json.dumps(document, indent=2))
        return response

    return system_resource


def _patch_boot(original: Callable[..., Any], driver: LabSystemsDriver, identity: str) -> Any:
    body = flask.request.get_json(silent=True)
    boot = body.get("Boot") if isinstance(body, dict) else None
    enabled = boot.get("BootSourceOverrideEnabled") if isinstance(boot, dict) else None
    if enabled is None:
        return original(identity)
    if enabled not in OVERRIDE_ENABLED:
        raise error.BadRequest(f"BootSourceOverrideEnabled {enabled!r} is not one of "
                               f"{', '.join(OVERRIDE_ENABLED)}")
    system = driver.uuid(identity)
    if set(boot) == {"BootSourceOverrideEnabled"} and set(body) == {"Boot"}:
        # sushy-tools' handler wants a target or mode; the override alone is a valid PATCH.
        driver.set_boot_override(system, enabled)
        return flask.Response(status=204)
    response = original(identity)
    if response.status_code < 300:
        driver.set_boot_override(system, enabled)
    return response


def _with_apply_times(original: Callable[..., Any]) -> Callable[..., Any]:
    def bios(identity: str) -> Any:
        response = original(identity)
        if response.status_code == 200:
            document = json.loads(response.get_data())
            settings = document.setdefault("@Redfish.Settings", {})
            settings["SupportedApplyTimes"] = list(BIOS_APPLY_TIMES)
            response.set_data(json.dumps(document, indent=2))
        return response

    return bios


def _with_pending_bios(original: Callable[..., Any]) -> Callable[..., Any]:
    def bios_settings(identity: str) -> Any:
        if flask.request.method == "PATCH":
            body = flask.request.get_json(silent=True)
            if not isinstance(body, dict):
                raise error.BadRequest("BIOS/Settings: the request body must be a JSON object")
            apply = body.get("@Redfish.SettingsApplyTime")
            when = apply.get("ApplyTime") if isinstance(apply, dict) else apply
            if when is not None and when not in BIOS_APPLY_TIMES:
                raise error.BadRequest(f"BIOS/Settings: ApplyTime {when!r} is not supported "
                                       f"(supported: {', '.join(BIOS_APPLY_TIMES)})")
            return original(identity)
        response = original(identity)
        if response.status_code == 200:
            document = json.loads(response.get_data())
            document["Attributes"] = _app().systems.get_bios_settings(identity)
            response.set_data(json.dumps(document, indent=2))
        return response

    return bios_settings


def _with_bmc_version(original: Callable[..., Any]) -> Callable[..., Any]:
    def manager_resource(identity: str) -> Any:
        response = original(identity)
        if flask.request.method == "GET" and response.status_code == 200:
            document = json.loads(response.get_data())
            versions = _app().systems.get_versions(document["UUID"])
            document["FirmwareVersion"] = versions[firmware.VERSION_KEYS["bmc"]]
            document.setdefault("Actions", {})["#Manager.Reset"] = {
                "target": f"{document['@odata.id']}/Actions/Manager.Reset",
                "ResetType@Redfish.AllowableValues": list(MANAGER_RESET_TYPES),
            }
            response.set_data(json.dumps(document, indent=2))
        return response

    return manager_resource


def manager_reset(identity: str) -> flask.Response:
    """Manager.Reset: the BMC restarts; a staged BMC image is what it runs afterwards."""
    app = _app()
    manager = app.managers.get_manager(identity)  # unknown identity: sushy-tools' 404
    body = flask.request.get_json(silent=True)
    reset = body.get("ResetType") if isinstance(body, dict) else None
    if reset not in MANAGER_RESET_TYPES:
        raise error.BadRequest(f"Manager.Reset: ResetType {reset!r} is not one of "
                               f"{', '.join(MANAGER_RESET_TYPES)}")
    app.systems.restart_bmc(manager["UUID"])
    app.lab_restarting_until = time.monotonic() + RESTART_SECONDS
    return flask.Response(status=204)


# -- the system event log -----------------------------------------------------------------

SEL_SERVICE = "SEL"


def _log_system(identity: str) -> str:
    """The system's UUID (its node name is an alias); unknown: sushy-tools' 404."""
    driver = _app().systems
    system = driver.uuid(identity)
    if system not in driver.systems:
        raise error.NotFound(f"no system {identity!r}")
    return system


def _logs_path(system: str) -> str:
    return f"/redfish/v1/Systems/{system}/LogServices"


def _sel_service(identity: str, service: str) -> str:
    system = _log_system(identity)
    if service != SEL_SERVICE:
        raise error.NotFound(f"no log service {service!r} (services: {SEL_SERVICE})")
    return f"{_logs_path(system)}/{SEL_SERVICE}"


def _sel_store() -> dict[str, Any]:
    driver = _app().systems
    try:
        return sel.read_store(driver.lab, driver.node)
    except sel.SelError as exc:
        raise error.FishyError(str(exc)) from None


def _with_log_services(original: Callable[..., Any]) -> Callable[..., Any]:
    def system_resource(identity: str) -> Any:
        response = original(identity)
        if flask.request.method == "GET" and response.status_code == 200:
            document = json.loads(response.get_data())
            document["LogServices"] = {"@odata.id": _logs_path(document["Id"])}
            response.set_data(json.dumps(document, indent=2))
        return response

    return system_resource


def log_services(identity: str) -> flask.Response:
    path = _logs_path(_log_system(identity))
    return _json({
        "@odata.type": "#LogServiceCollection.LogServiceCollection",
        "@odata.id": path,
        "Name": "System Log Services",
        "Members@odata.count": 1,
        "Members": [{"@odata.id": f"{path}/{SEL_SERVICE}"}],
    })


def log_service(identity: str, service: str) -> flask.Response:
    path = _sel_service(identity, service)
    return _json({
        "@odata.type": "#LogService.v1_4_0.LogService",
        "@odata.id": path,
        "Id": SEL_SERVICE,
        "Name": "System Event Log",
        "Description": "IPMI System Event Log",
        "LogEntryType": "SEL",
        "MaxNumberOfRecords": sel.MAX_ENTRIES,
        "OverWritePolicy": "WrapsWhenFull",
        "DateTime": datetime.now(UTC).isoformat(timespec="seconds"),
        "ServiceEnabled": True,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Entries": {"@odata.id": f"{path}/Entries"},
        "Actions": {"#LogService.ClearLog": {
            "target": f"{path}/Actions/LogService.ClearLog"}},
    })


def _entry_resource(path: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"@odata.type": "#LogEntry.v1_15_0.LogEntry",
            "@odata.id": f"{path}/Entries/{entry['Id']}", **entry}


def log_entries(identity: str, service: str) -> flask.Response:
    """The entries, oldest first, each one whole (as most BMCs expand them)."""
    path = _sel_service(identity, service)
    members = [_entry_resource(path, entry) for entry in _sel_store().get("entries", [])]
    return _json({
        "@odata.type": "#LogEntryCollection.LogEntryCollection",
        "@odata.id": f"{path}/Entries",
        "Name": "System Event Log Entries",
        "Members@odata.count": len(members),
        "Members": members,
    })


def log_entry(identity: str, service: str, entry_id: str) -> flask.Response:
    path = _sel_service(identity, service)
    for entry in _sel_store().get("entries", []):
        if entry.get("Id") == entry_id:
            return _json(_entry_resource(path, entry))
    raise error.NotFound(f"no entry {entry_id!r} in {path}")


def clear_log(identity: str, service: str) -> flask.Response:
    """LogService.ClearLog: the log is emptied; record IDs go on from where they were."""
    _sel_service(identity, service)
    driver = _app().systems
    sel.clear_redfish(driver.lab, driver.node)
    return flask.Response(status=204)
