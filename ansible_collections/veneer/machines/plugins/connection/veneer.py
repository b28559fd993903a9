# Copyright: veneer developers
# GNU Lesser General Public License v2.1+ (see https://www.gnu.org/licenses/lgpl-2.1.txt)
"""Connection plugin: tasks run in a veneer machine through `veneer exec`, files move with `veneer cp`."""

from __future__ import annotations

DOCUMENTATION = r"""
name: veneer
author: veneer developers (@veneer)
short_description: Run tasks in veneer machines
description:
  - Runs commands in a running veneer machine with C(veneer exec), which returns the command's own exit
    status, and copies files in and out with C(veneer cp).
  - The machine is on the controller itself, or on another host that the controller reaches with
    C(ssh) (O(veneer_host)); there, the SSH user must be allowed to run veneer (root).
  - Modelled on the community.general Incus and Proxmox pct_remote connection plugins.
version_added: 0.1.0
options:
  remote_addr:
    description:
      - The name of the machine.
    type: string
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_veneer_machine
  remote_user:
    description:
      - The user of the machine that runs the tasks (C(veneer exec --user)).
    type: string
    default: root
    vars:
      - name: ansible_user
    env:
      - name: ANSIBLE_REMOTE_USER
    ini:
      - section: defaults
        key: remote_user
    keyword:
      - name: remote_user
  executable:
    description:
      - The shell that runs each command inside the machine.
    type: string
    default: /bin/sh
    vars:
      - name: ansible_executable
      - name: ansible_veneer_executable
  veneer_host:
    description:
      - The host that runs the machine, as C([user@]host) for C(ssh). Empty for the controller itself.
    type: string
    default: ''
    vars:
      - name: ansible_veneer_host
  veneer_command:
    description:
      - The veneer command on the host that runs the machine (split like a shell would).
    type: string
    default: veneer
    vars:
      - name: ansible_veneer_command
  veneer_ssh_args:
    description:
      - Extra arguments for C(ssh) to O(veneer_host), such as C(-p 2222 -i key).
    type: string
    default: ''
    vars:
      - name: ansible_veneer_ssh_args
"""

EXAMPLES = r"""
# inventory (INI)
# [machines]
# web ansible_connection=veneer.machines.veneer
# db  ansible_connection=veneer.machines.veneer ansible_veneer_host=root@node2
"""

import io
import os
import shlex
import tarfile
from subprocess import PIPE, Popen

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase

from ansible_collections.veneer.machines.plugins.plugin_utils.command import (
    SSH_FAILED,
    veneer_argv,
    veneer_error,
)


class Connection(ConnectionBase):
    """Tasks in a veneer machine, on this host or one reached over SSH."""

    transport = "veneer.machines.veneer"
    has_pipelining = True
    default_user = "root"

    def _machine(self) -> str:
        return self.get_option("remote_addr")

    def _host(self) -> str:
        return self.get_option("veneer_host") or ""

    def _where(self) -> str:
        return f"machine '{self._machine()}'" + (f" on {self._host()}" if self._host() else "")

    def _argv(self, args: list[str]) -> list[str]:
        return veneer_argv(
            self.get_option("veneer_command"), args, host=self._host(), ssh_args=self.get_option("veneer_ssh_args")
        )

    def _connect(self) -> Connection:
        super()._connect()
        if not self._connected:
            self._display.vvv(f"ESTABLISH VENEER CONNECTION TO {self._where()}", host=self._machine())
            self._connected = True
        return self

    def _run(self, args: list[str], in_data: bytes | None = None) -> tuple[int, bytes, bytes]:
        """Run veneer with `args`; fail the connection when veneer (or ssh) could not do its part."""
        argv = self._argv(args)
        self._display.vvvvv(f"EXEC {shlex.join(argv)}", host=self._machine())
        try:
            process = Popen([to_bytes(a, errors="surrogate_or_strict") for a in argv],
                            stdin=PIPE, stdout=PIPE, stderr=PIPE)  # fmt: skip
        except FileNotFoundError as e:
            raise AnsibleConnectionFailure(f"Cannot run '{argv[0]}' for {self._where()}: {e.strerror}") from e
        stdout, stderr = process.communicate(in_data)
        if self._host() and process.returncode == SSH_FAILED:
            raise AnsibleConnectionFailure(f"Cannot reach {self._host()} over ssh: {to_text(stderr).strip()}")
        message = veneer_error(process.returncode, stderr)
        if message is not None and ("No machine named" in message or "is not running" in message):
            raise AnsibleConnectionFailure(f"veneer {self._where()}: {message}")
        return process.returncode, stdout, stderr

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run `cmd` with the machine's shell; its own exit status comes back."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._display.vvv(f"EXEC {cmd}", host=self._machine())
        user = self.get_option("remote_user") or "root"
        args = ["exec", *([] if user == "root" else ["--user", user]), self._machine(), "--"]
        return self._run([*args, self.get_option("executable"), "-c", cmd], in_data)

    def _owner_args(self) -> list[str]:
        """`veneer cp` flags that give a file to the remote user (veneer gives it to root otherwise)."""
        user = self.get_option("remote_user") or "root"
        if user == "root":
            return []
        returncode, stdout, stderr = self.exec_command("id -u && id -g")
        ids = to_text(stdout).split()
        if returncode != 0 or len(ids) != 2:
            raise AnsibleError(f"Cannot find the ids of user '{user}' in {self._where()}: {to_text(stderr)}")
        return ["--uid", ids[0], "--gid", ids[1]]

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a file of the controller to `out_path` in the machine."""
        super().put_file(in_path, out_path)
        self._display.vvv(f"PUT {in_path} TO {out_path}", host=self._machine())
        if not os.path.isfile(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"Input path is not a file: {in_path}")
        owner = self._owner_args()
        if not self._host():
            returncode, _stdout, stderr = self._run(["cp", *owner, in_path, f"{self._machine()}:{out_path}"])
        else:
            # The file is on the controller, veneer on the other host: send it as a tar stream of one member.
            directory, name = os.path.split(out_path)
            stream = io.BytesIO()
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
                archive.add(in_path, arcname=name, recursive=False,
                            filter=lambda m: _owned_by(m, 0, 0))  # fmt: skip
            target = f"{self._machine()}:{directory or '/'}"
            returncode, _stdout, stderr = self._run(["cp", *owner, "-", target], stream.getvalue())
        if returncode != 0:
            raise AnsibleError(f"Failed to copy {in_path} to {out_path} in {self._where()}: {to_text(stderr)}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy the file `in_path` of the machine to `out_path` on the controller."""
        super().fetch_file(in_path, out_path)
        self._display.vvv(f"FETCH {in_path} TO {out_path}", host=self._machine())
        if not self._host():
            returncode, _stdout, stderr = self._run(["cp", "-L", f"{self._machine()}:{in_path}", out_path])
            if returncode != 0:
                raise AnsibleError(f"Failed to fetch {in_path} from {self._where()}: {to_text(stderr)}")
            return
        returncode, stdout, stderr = self._run(["cp", "-L", f"{self._machine()}:{in_path}", "-"])
        if returncode != 0:
            raise AnsibleError(f"Failed to fetch {in_path} from {self._where()}: {to_text(stderr)}")
        # The stream comes from the machine: take the data of its one regular file, use none of its names.
        with tarfile.open(fileobj=io.BytesIO(stdout), mode="r:") as archive:
            member = archive.next()
            data = archive.extractfile(member) if member is not None and member.isreg() else None
            if data is None:
                raise AnsibleError(f"Failed to fetch {in_path} from {self._where()}: not a regular file")
            with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as out:
                out.write(data.read())

    def close(self) -> None:
        super().close()
        self._connected = False


def _owned_by(member: tarfile.TarInfo, uid: int, gid: int) -> tarfile.TarInfo:
    member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
    return member
