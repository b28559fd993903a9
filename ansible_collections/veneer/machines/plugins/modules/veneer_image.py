#!/usr/bin/python
# Copyright: veneer developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)
"""Module veneer_image: a veneer image present (built, pulled or imported) or absent on its host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: veneer_image
short_description: Manage veneer images
description:
  - Creates a veneer image on the host the task runs on when it is missing (from busybox, debootstrap, a
    registry or an archive), updates it with a command, or removes it, through the C(veneer) command.
    Reports C(changed) only when it changed something.
version_added: 0.1.0
author: veneer developers (@veneer)
options:
  name:
    description: The image's name.
    type: str
    required: true
  state:
    description: V(present) creates the image when it is missing; V(absent) removes it (refused by veneer
      while machines use it).
    type: str
    choices: [present, absent]
    default: present
  source:
    description: How a missing image is made.
    type: str
    choices: [busybox, debootstrap, pull, import]
    default: busybox
  suite:
    description: The Debian suite for V(debootstrap), such as V(bookworm).
    type: str
    default: bookworm
  packages:
    description: Packages to add when bootstrapping.
    type: list
    elements: str
  ref:
    description: The image reference for V(pull) (C(REGISTRY/REPO:TAG)), or the archive path for V(import).
    type: str
  update:
    description:
      - A command run in the image when it is created here (C(veneer image update NAME -- COMMAND)),
        making its revision 1. Not run on an image that existed already.
    type: list
    elements: str
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
- name: A Debian image with python3 (for Ansible modules inside its machines)
  veneer.machines.veneer_image:
    name: deb
    source: debootstrap
    suite: bookworm
    packages: [python3]

- name: From a registry
  veneer.machines.veneer_image:
    name: alpine
    source: pull
    ref: docker.io/library/alpine:3.20
"""

RETURN = r"""
image:
  description: The image as C(veneer image show --json) shows it afterwards (empty when absent).
  returned: always
  type: dict
commands:
  description: The veneer commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: list
"""

import json
import shlex

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "source": {"type": "str", "default": "busybox", "choices": ["busybox", "debootstrap", "pull", "import"]},
            "suite": {"type": "str", "default": "bookworm"},
            "packages": {"type": "list", "elements": "str"},
            "ref": {"type": "str"},
            "update": {"type": "list", "elements": "str"},
            "veneer_command": {"type": "str", "default": "veneer"},
        },
        required_if=[("source", "pull", ("ref",)), ("source", "import", ("ref",))],
        supports_check_mode=True,
    )
    params = module.params
    prefix = shlex.split(params["veneer_command"])
    name = params["name"]
    commands: list[list[str]] = []

    def show() -> dict | None:
        rc, out, err = module.run_command([*prefix, "image", "show", name, "--json"])
        if rc == 0:
            return json.loads(out)
        if "No image named" in err or "not found" in err.lower():
            return None
        module.fail_json(msg=f"veneer image show {name} failed: {err.strip()}", rc=rc)
        return None

    def change(*args: str) -> None:
        commands.append(list(args))
        if module.check_mode:
            return
        rc, out, err = module.run_command([*prefix, *args])
        if rc != 0:
            module.fail_json(msg=f"veneer {shlex.join(args)} failed: {err.strip()}", rc=rc, stdout=out,
                             stderr=err, commands=commands)  # fmt: skip

    before = show()
    if params["state"] == "absent":
        if before is not None:
            change("image", "rm", name)
    elif before is None:
        packages = ["--packages", ",".join(params["packages"])] if params["packages"] else []
        source = params["source"]
        if source == "busybox":
            change("image", "create", name, "--busybox")
        elif source == "debootstrap":
            change("image", "create", name, "--debootstrap", params["suite"], *packages)
        elif source == "pull":
            change("image", "pull", name, params["ref"])
        else:
            change("image", "import", name, params["ref"])
        if params["update"]:
            change("image", "update", name, "--", *params["update"])
    after = show() if not module.check_mode else before
    result = {"changed": bool(commands), "commands": commands, "image": after or {}}
    if module._diff:
        def view(image: dict | None) -> dict:
            if image is None:
                return {"state": "absent"}
            return {"revisions": len(image.get("revisions", [])), "current": image.get("current")}

        after_view = view(after) if not module.check_mode else {"planned": [shlex.join(c) for c in commands]}
        result["diff"] = {"before": view(before), "after": after_view}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
