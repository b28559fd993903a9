# Copyright: veneer developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)
"""Inventory plugin: the machines of one or many hosts, from `veneer list --json` run here or over SSH."""

from __future__ import annotations

DOCUMENTATION = r"""
name: veneer
author: veneer developers (@veneer)
short_description: veneer machines of one or many hosts
description:
  - Lists the machines of each host in O(hosts) with C(veneer list --json), on the controller itself or
    over C(ssh), and adds each as a host that the M(veneer.machines.veneer) connection plugin reaches.
  - A machine of the controller is named as it is; a machine of another host is named C(NAME@HOST).
  - Groups C(veneer), C(veneer_host_HOST), C(veneer_image_IMAGE) and C(veneer_state_STATE) (running,
    stopped, failed), plus those made by O(keyed_groups) and O(groups).
  - Host variables C(veneer_name), C(veneer_host), C(veneer_image), C(veneer_revision), C(veneer_state),
    C(veneer_network), C(veneer_addresses), C(veneer_privileged), and the connection settings.
  - The inventory source is a YAML file whose name ends in C(veneer.yml) or C(veneer.yaml).
version_added: 0.1.0
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin.
    required: true
    choices: [veneer.machines.veneer]
    type: string
  hosts:
    description:
      - The hosts whose machines are listed, as C([user@]host) for C(ssh); C(local) is the controller.
      - An entry may also be a mapping with C(host), and C(veneer_command) and C(ssh_args) for that host.
    type: list
    elements: raw
    default: [local]
  veneer_command:
    description: The veneer command on the hosts (split like a shell would).
    type: string
    default: veneer
  ssh_args:
    description: Extra arguments for C(ssh), such as C(-p 2222 -i key).
    type: string
    default: ''
"""

EXAMPLES = r"""
# machines.veneer.yml
plugin: veneer.machines.veneer
hosts:
  - local
  - root@node2
  - {host: root@node3, veneer_command: /opt/veneer/bin/veneer, ssh_args: -p 2222}
keyed_groups:
  - key: veneer_network
    prefix: network
compose:
  ansible_user: "'root'"
"""

import json
from subprocess import PIPE, Popen

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.veneer.machines.plugins.plugin_utils.command import veneer_argv

LOCAL = "local"


class InventoryModule(BaseInventoryPlugin, Constructable):
    """veneer machines as inventory hosts."""

    NAME = "veneer.machines.veneer"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("veneer.yml", "veneer.yaml"))

    def _host_settings(self, entry: object) -> tuple[str, str, str]:
        """The host, its veneer command and its ssh arguments, from one entry of `hosts`."""
        command, ssh_args = self.get_option("veneer_command"), self.get_option("ssh_args")
        if isinstance(entry, str):
            return entry, command, ssh_args
        if isinstance(entry, dict) and isinstance(entry.get("host"), str):
            return entry["host"], entry.get("veneer_command", command), entry.get("ssh_args", ssh_args)
        raise AnsibleParserError(f"Invalid entry in hosts: {entry!r}; use a host name or a mapping with 'host'")

    def _machines(self, host: str, command: str, ssh_args: str) -> list[dict[str, object]]:
        """`veneer list --json` of one host."""
        argv = veneer_argv(command, ["list", "--json"], host="" if host == LOCAL else host, ssh_args=ssh_args)
        try:
            process = Popen(argv, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        except FileNotFoundError as e:
            raise AnsibleParserError(f"Cannot run '{argv[0]}' to list the machines of {host}: {e}") from e
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise AnsibleParserError(f"Cannot list the machines of {host}: {to_text(stderr).strip()}")
        try:
            machines = json.loads(stdout)
        except ValueError as e:
            raise AnsibleParserError(f"'veneer list --json' on {host} printed no JSON: {e}") from e
        return list(machines)

    def _add_group(self, name: str, host: str) -> None:
        group = self.inventory.add_group(self._sanitize_group_name(name))
        self.inventory.add_child("veneer", group)
        self.inventory.add_host(host, group=group)

    def parse(self, inventory: object, loader: object, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        strict = self.get_option("strict")
        self.inventory.add_group("veneer")
        for entry in self.get_option("hosts"):
            host, command, ssh_args = self._host_settings(entry)
            for machine in self._machines(host, command, ssh_args):
                name = str(machine["name"])
                hostname = name if host == LOCAL else f"{name}@{host}"
                self.inventory.add_host(hostname, group="veneer")
                variables = {
                    "veneer_name": name,
                    "veneer_host": host,
                    "veneer_image": machine.get("image"),
                    "veneer_revision": machine.get("revision"),
                    "veneer_state": machine.get("state"),
                    "veneer_network": machine.get("network"),
                    "veneer_addresses": machine.get("addresses") or [],
                    "veneer_privileged": machine.get("privileged"),
                    "ansible_connection": "veneer.machines.veneer",
                    "ansible_veneer_machine": name,
                    "ansible_veneer_host": "" if host == LOCAL else host,
                    "ansible_veneer_command": command,
                    "ansible_veneer_ssh_args": ssh_args,
                }
                for key, value in variables.items():
                    self.inventory.set_variable(hostname, key, value)
                self._add_group(f"veneer_host_{host}", hostname)
                self._add_group(f"veneer_image_{machine.get('image')}", hostname)
                self._add_group(f"veneer_state_{machine.get('state')}", hostname)
                hostvars = self.inventory.get_host(hostname).get_vars()
                self._set_composite_vars(self.get_option("compose"), hostvars, hostname, strict=strict)
                self._add_host_to_composed_groups(self.get_option("groups"), hostvars, hostname, strict=strict)
                self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, hostname, strict=strict)
