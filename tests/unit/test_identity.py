from veneer.images.identity import belongs_to_machine, identifies_machine


def test_identity_and_logs() -> None:
    for path in (
        "etc/machine-id",
        "etc/hostname",
        "etc/ssh/ssh_host_ed25519_key.pub",
        "var/lib/systemd/random-seed",
        "etc/systemd/network/05-veneer-host0.network",
    ):
        assert identifies_machine(path) and belongs_to_machine(path), path
    assert belongs_to_machine("var/log/dpkg.log") and not identifies_machine("var/log/dpkg.log")
    for path in ("etc/motd", "etc/ssh/sshd_config", "var/lib/dpkg/status", "var/logs"):
        assert not belongs_to_machine(path), path
