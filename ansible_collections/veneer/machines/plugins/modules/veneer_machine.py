#!/usr/bin/python
# Copyright: veneer developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)
"""Module veneer_machine: a veneer machine present, started, stopped or absent, on the host it runs on."""

from __future__ import annotations

DOCUMENTATION = r"""
module: veneer_machine
short_description: Manage veneer machines
description:
  - Creates, starts, stops, reconfigures, rebases and removes a veneer machine of the host the task runs
    on, through the C(veneer) command. Reports C(changed) only when it changed something.
version_added: 0.1.0
author: veneer developers (@veneer)
options:
  name:
    description: The machine's name.
    type: str
    required: true
  state:
    description:
      - V(present) makes the machine exist (stopped if new), V(started) and V(stopped) also set whether it
        runs, V(absent) stops and removes it.
    type: str
    choices: [present, started, stopped, absent]
    default: started
  image:
    description: The image a new machine is a child of. Required to create one (unless O(copy_from)).
    type: str
  copy_from:
    description:
      - C([user@]host) of another veneer host. When the machine is absent here, it is copied from that host
        (C(veneer copy --from), which sends only the image layers this host lacks) instead of created.
      - The machine must be stopped there. Present here, it is left as it is (no second copy).
    type: str
  copy_options:
    description:
      - More options for C(veneer copy --from), such as V(["-p", "2222", "-i", "/root/.ssh/id_ed25519"]),
        V(--remote-veneer) and its command, or V(-o) and an ssh option.
    type: list
    elements: str
    default: []
  network:
    description: V(nat), V(host), V(none) or V(bridge:BR). Changing it restarts a running machine.
    type: str
  ports:
    description: Port forwards C([HOST_IP:]HOST_PORT:GUEST_PORT[/udp]) of a nat machine (at creation).
    type: list
    elements: str
  memory:
    description: Memory limit, such as V(512M). Changing it restarts a running machine.
    type: str
  cpus:
    description: CPU time limit in CPUs, such as V(1.5).
    type: str
  pids:
    description: Process limit.
    type: int
  enabled:
    description:
      - Start the machine at host boot (V(true), C(veneer enable)) or not (V(false), C(veneer disable)).
      - Needs systemd as the host's PID 1. Omitted, left as it is.
    type: bool
  rebased:
    description: Rebase the machine onto its image's current revision when it is on an older one.
    type: bool
    default: false
  veneer_command:
    description: The veneer command (split like a shell would).
    type: str
    default: veneer
attributes:
  check_mode:
    description: Reports what would change and the commands it would run, changing nothing.
    support: full
  diff_mode:
    description: Shows the object before and after (in check mode, the commands planned).
    support: full
"""

EXAMPLES = r"""
- name: A running machine of image deb
  veneer.machines.veneer_machine:
    name: web
    image: deb
    network: nat
    ports: ["8080:80"]
    memory: 1G

- name: Follow the image's newest revision
  veneer.machines.veneer_machine:
    name: web
    rebased: true

- name: Copied from node1 if this host does not have it yet, then started
  veneer.machines.veneer_machine:
    name: web
    copy_from: root@node1
    copy_options: ["-p", "22"]

- name: Gone
  veneer.machines.veneer_machine:
    name: web
    state: absent
"""

RETURN = r"""
machine:
  description: The machine as C(veneer status --json) shows it afterwards (empty when absent).
  returned: always
  type: dict
commands:
  description: The veneer commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: list
"""

import json
import os
import shlex

from ansible.module_utils.basic import AnsibleModule


class Veneer:
    """The veneer command line, as this module uses it."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.prefix = shlex.split(module.params["veneer_command"])
        self.commands: list[list[str]] = []

    def query(self, *args: str) -> tuple[int, str, str]:
        return self.module.run_command([*self.prefix, *args])

    def change(self, *args: str) -> None:
        """Run a command that changes something (not in check mode); fail the task if it fails."""
        self.commands.append(list(args))
        if self.module.check_mode:
            return
        rc, out, err = self.module.run_command([*self.prefix, *args])
        if rc != 0:
            self.module.fail_json(msg=f"veneer {shlex.join(args)} failed: {err.strip()}", rc=rc,
                                  stdout=out, stderr=err, commands=self.commands)  # fmt: skip

    def status(self, name: str) -> dict | None:
        rc, out, err = self.query("status", name, "--json")
        if rc == 0:
            return json.loads(out)
        if "No machine named" in err:
            return None
        self.module.fail_json(msg=f"veneer status {name} failed: {err.strip()}", rc=rc)
        return None


def _settings_args(params: dict, machine: dict | None) -> list[str]:
    """`veneer set`/`create` options for the settings asked for that the machine does not have."""
    args: list[str] = []
    limits = (machine or {}).get("limits") or {}
    if params["network"] is not None and (machine is None or machine.get("network") != params["network"]):
        args += ["--network", params["network"]]
    if params["memory"] is not None and (machine is None or _size(params["memory"]) != limits.get("memory")):
        args += ["--memory", params["memory"]]
    if params["cpus"] is not None and (machine is None or float(params["cpus"]) != limits.get("cpus")):
        args += ["--cpus", params["cpus"]]
    if params["pids"] is not None and (machine is None or params["pids"] != limits.get("pids")):
        args += ["--pids", str(params["pids"])]
    return args


def _size(text: str) -> int | None:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in units and not text[-1:].isdigit() else ""
    try:
        return int(float(text[: len(text) - len(unit)]) * units[unit])
    except ValueError:
        return None


def _view(machine: dict | None) -> dict:
    """What --diff shows of a machine."""
    if machine is None:
        return {"state": "absent"}
    keys = ("image", "revision", "state", "network", "limits", "ports")
    return {k: machine.get(k) for k in keys}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "started", "choices": ["present", "started", "stopped", "absent"]},
            "image": {"type": "str"},
            "copy_from": {"type": "str"},
            "copy_options": {"type": "list", "elements": "str", "default": []},
            "network": {"type": "str"},
            "ports": {"type": "list", "elements": "str"},
            "memory": {"type": "str"},
            "cpus": {"type": "str"},
            "pids": {"type": "int"},
            "enabled": {"type": "bool"},
            "rebased": {"type": "bool", "default": False},
            "veneer_command": {"type": "str", "default": "veneer"},
        },
        supports_check_mode=True,
    )
    params = module.params
    name, state = params["name"], params["state"]
    veneer = Veneer(module)
    before = veneer.status(name)
    running = before is not None and before.get("state") == "running"
    if state == "absent":
        if running:
            veneer.change("stop", name)
        if before is not None:
            veneer.change("rm", name)
    else:
        present = before
        if before is None and params["copy_from"]:
            veneer.change("copy", "--from", params["copy_from"], name, *params["copy_options"])
            # Its settings came with it: what the task asks for differently is set below.
            present = veneer.status(name) if not module.check_mode else None
        elif before is None:
            if not params["image"]:
                module.fail_json(msg=f"Machine '{name}' does not exist: give 'image' to create it, or "
                                 "'copy_from' to copy it from another host")  # fmt: skip
            ports = [a for p in params["ports"] or [] for a in ("--port", p)]
            veneer.change("create", name, "--from", params["image"], *ports, *_settings_args(params, None))
        if present is not None:
            if params["image"] and present.get("image") != params["image"]:
                module.fail_json(msg=f"Machine '{name}' is a child of '{present.get('image')}', not of "
                                 f"'{params['image']}'; remove it first to change its image")  # fmt: skip
            changes = _settings_args(params, present)
            if changes or (params["rebased"] and _behind(veneer, present)):
                if running:
                    veneer.change("stop", name)
                if changes:
                    veneer.change("set", name, *changes)
                if params["rebased"] and _behind(veneer, present):
                    veneer.change("rebase", name, "--no-restart")
                running = False
        if state == "started" and not running:
            veneer.change("start", name, "--wait")
        elif state == "stopped" and running:
            veneer.change("stop", name)
        wanted = params["enabled"]
        if wanted is not None and wanted != (before is not None and _enabled(veneer, name)):
            veneer.change("enable" if wanted else "disable", name)
    changed = bool(veneer.commands)
    after = veneer.status(name) if not module.check_mode else before
    result = {"changed": changed, "commands": veneer.commands, "machine": after or {}}
    if module._diff:
        result["diff"] = {"before": _view(before), "after": _view(after) if not module.check_mode else
                          {**_view(before), "planned": [shlex.join(c) for c in veneer.commands]}}  # fmt: skip
    module.exit_json(**result)


def _enabled(veneer: Veneer, name: str) -> bool:
    """Whether the machine's boot unit is installed (`veneer enable --print` names its path)."""
    rc, out, err = veneer.query("enable", name, "--print")
    if rc != 0 or not out.startswith("# /"):
        veneer.module.fail_json(msg=f"veneer enable {name} --print failed: {err.strip()}")
    return os.path.exists(out.splitlines()[0].removeprefix("# "))


def _behind(veneer: Veneer, machine: dict) -> bool:
    """Whether the machine is on an older revision than its image's current one."""
    rc, out, err = veneer.query("image", "show", machine["image"], "--json")
    if rc != 0:
        veneer.module.fail_json(msg=f"veneer image show {machine['image']} failed: {err.strip()}")
    return int(json.loads(out)["current"]) != int(machine["revision"])


if __name__ == "__main__":
    main()
