"""Where the config's paths and secret come from: the config file's folder, systemd's
$STATE_DIRECTORY and $CREDENTIALS_DIRECTORY, and what happens when one is in the way."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from ocrwatch.config import load_config, load_settings
from ocrwatch.errors import ConfigError, JournalError
from ocrwatch.lifecycle import state_lock

from .conftest import OCRWATCH, SECRET, cli_env


def write(path: Path, data: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


TRIAL = {"base_url": "http://127.0.0.1:9", "trial": True}


class TestRelativePaths:
    def test_check_from_another_cwd_shows_the_folder_beside_the_config(self, tmp_path):
        """A relative folder path is taken from the config file's folder, not from the
        working directory (which is `/` under systemd); `check` prints it absolute."""
        etc = tmp_path / "etc"
        (etc / "inbox").mkdir(parents=True)
        config = write(
            etc / "config.yaml",
            {"api": TRIAL, "state_dir": "state", "folders": [{"path": "inbox"}]},
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()

        result = subprocess.run(
            [*OCRWATCH, "check", "-c", "../etc/config.yaml"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            env=cli_env(),
            check=False,
            timeout=30,
        )

        assert 0 == result.returncode, result.stderr
        lines = result.stdout.splitlines()
        assert f"folder: {etc / 'inbox'}" in lines
        assert f"state_dir: {etc / 'state'}" in lines
        assert not any("missing" in line for line in lines)
        assert config.exists()

    def test_dot_dot_is_folded_so_a_state_dir_inside_a_folder_is_caught(self, tmp_path):
        """`../etc/inbox/state` beside `inbox` is inside the watched folder, and is refused;
        a relative path that climbs out reads as the place it names."""
        etc = tmp_path / "etc"
        inside = write(
            etc / "inside.yaml",
            {
                "api": TRIAL,
                "state_dir": "../etc/inbox/state",
                "folders": [{"path": "inbox"}],
            },
        )
        outside = write(
            etc / "outside.yaml",
            {"api": TRIAL, "state_dir": "../state", "folders": [{"path": "inbox"}]},
        )

        with pytest.raises(ConfigError, match=r"is inside folders\[0\]\.path"):
            load_config(inside, {})
        assert tmp_path / "state" == load_config(outside, {}).state_dir

    def test_secret_file_and_ca_bundle_are_relative_to_the_config(self, tmp_path):
        """api.client_secret_file and api.ca_bundle, when relative, live beside the config."""
        etc = tmp_path / "etc"
        etc.mkdir()
        (etc / "secret").write_text(SECRET)
        (etc / "secret").chmod(0o600)
        (etc / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        config = write(
            etc / "config.yaml",
            {
                "api": {
                    "base_url": "http://127.0.0.1:9",
                    "client_id": "id",
                    "client_secret_file": "secret",
                    "ca_bundle": "ca.pem",
                },
                "state_dir": str(tmp_path / "state"),
                "folders": [{"path": str(tmp_path / "in")}],
            },
        )

        loaded, credentials = load_settings(config, {})

        assert (etc / "secret", etc / "ca.pem") == (
            loaded.api.client_secret_file,
            loaded.api.ca_bundle,
        )
        assert credentials is not None
        assert SECRET == credentials.client_secret.get_secret_value()


class TestPathsInTheWay:
    def test_a_folder_path_that_is_a_file_is_exit_2_naming_the_key(self, tmp_path):
        """A folder path that exists as a file is a config error naming folders[0].path,
        not a folder "missing: will be watched once it appears"."""
        (tmp_path / "inbox").write_text("not a folder")
        config = write(
            tmp_path / "config.yaml",
            {"api": TRIAL, "state_dir": "state", "folders": [{"path": "inbox"}]},
        )

        result = subprocess.run(
            [*OCRWATCH, "check", "-c", str(config)],
            capture_output=True,
            text=True,
            env=cli_env(),
            check=False,
            timeout=30,
        )

        assert (
            2,
            [
                f"ocrwatch: {config}: folders[0].path: {tmp_path / 'inbox'} exists but is "
                "not a folder; give the folder that receives the scans"
            ],
        ) == (result.returncode, result.stderr.splitlines())

    def test_a_missing_folder_is_still_accepted(self, tmp_path):
        """A folder that is not there yet (a late mount) is no error."""
        config = write(
            tmp_path / "config.yaml",
            {"api": TRIAL, "state_dir": "state", "folders": [{"path": "later"}]},
        )

        assert tmp_path / "later" == load_config(config, {}).folders[0].path

    def test_a_state_dir_that_is_a_file_is_one_sentence(self, tmp_path):
        """state_dir naming a file is a config error that says so and what to do."""
        (tmp_path / "state").write_text("")
        config = write(
            tmp_path / "config.yaml",
            {"api": TRIAL, "state_dir": "state", "folders": [{"path": "in"}]},
        )

        with pytest.raises(ConfigError) as caught:
            load_config(config, {})

        assert (
            f"{config}: state_dir: {tmp_path / 'state'} is a file, not a folder; "
            "remove it or set state_dir to a folder"
        ) == str(caught.value)

    def test_the_state_lock_says_when_state_dir_is_a_file(self, tmp_path):
        """A state_dir that became a file after the config was read: one sentence, no errno."""
        (tmp_path / "state").write_text("")

        with pytest.raises(JournalError) as caught, state_lock(tmp_path / "state"):
            pass

        assert (
            f"{tmp_path / 'state'}: state_dir is a file, not a folder (or lies under one); "
            "remove the file or set state_dir to a folder"
        ) == str(caught.value)


class TestStateDirectory:
    def config(self, tmp_path: Path, **extra: object) -> Path:
        return write(
            tmp_path / "config.yaml",
            {"api": TRIAL, "folders": [{"path": "in"}], **extra},
        )

    def test_state_directory_is_the_default(self, tmp_path):
        """Without state_dir, the first folder of systemd's $STATE_DIRECTORY is used, so each
        instance of ocrwatch@.service keeps its own journal."""
        env = {"STATE_DIRECTORY": "/var/lib/ocrwatch-office:/var/lib/other"}

        config = load_config(self.config(tmp_path), env)

        assert Path("/var/lib/ocrwatch-office") == config.state_dir

    def test_an_explicit_state_dir_wins(self, tmp_path):
        """A state_dir in the config wins over $STATE_DIRECTORY."""
        env = {"STATE_DIRECTORY": "/var/lib/ocrwatch-office"}

        config = load_config(self.config(tmp_path, state_dir="/srv/state"), env)

        assert Path("/srv/state") == config.state_dir

    def test_without_either_it_is_var_lib_ocrwatch(self, tmp_path):
        """Neither set: the documented default."""
        assert (
            Path("/var/lib/ocrwatch")
            == load_config(self.config(tmp_path), {}).state_dir
        )


class TestSecretFallThrough:
    def config(self, tmp_path: Path, secret_file: Path) -> Path:
        return write(
            tmp_path / "config.yaml",
            {
                "api": {
                    "base_url": "http://127.0.0.1:9",
                    "client_id": "id",
                    "client_secret_file": str(secret_file),
                },
                "state_dir": str(tmp_path / "state"),
                "folders": [{"path": str(tmp_path / "in")}],
            },
        )

    def test_an_unreadable_secret_file_falls_through_to_the_credential(self, tmp_path):
        """A client_secret_file that cannot be read (here: a folder, since root reads any
        file) is a warning, and the systemd credential is used."""
        unreadable = tmp_path / "secret"
        unreadable.mkdir()
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "client_secret").write_text(SECRET + "\n")
        (creds / "client_secret").chmod(0o400)

        with capture_logs() as logs:
            _, credentials = load_settings(
                self.config(tmp_path, unreadable), {"CREDENTIALS_DIRECTORY": str(creds)}
            )
            # A reload (SIGHUP) reads it again: said once per process, not at every reload.
            load_settings(
                self.config(tmp_path, unreadable), {"CREDENTIALS_DIRECTORY": str(creds)}
            )

        assert credentials is not None
        assert SECRET == credentials.client_secret.get_secret_value()
        assert [("secret.file_unreadable", "warning", str(unreadable))] == [
            (e["event"], e["log_level"], e["path"]) for e in logs
        ]

    def test_nothing_found_names_both_places(self, tmp_path):
        """With the file unreadable and no credential, the error names both and the fix."""
        unreadable = tmp_path / "secret"
        unreadable.mkdir()
        creds = tmp_path / "creds"
        creds.mkdir()
        config = self.config(tmp_path, unreadable)

        with pytest.raises(ConfigError) as caught, capture_logs():
            load_settings(config, {"CREDENTIALS_DIRECTORY": str(creds)})

        assert str(caught.value).startswith(
            f"{config}: no client secret found (api.client_secret_file {unreadable}: "
            f"is a directory; systemd credential {creds / 'client_secret'}: no such file "
            "or directory); point api.client_secret_file at a file that holds it"
        ), str(caught.value)

    def test_no_client_id_is_its_own_sentence(self, tmp_path):
        """A missing client id names api.client_id only."""
        config = write(
            tmp_path / "config.yaml",
            {
                "api": {"base_url": "http://127.0.0.1:9", "client_secret": SECRET},
                "state_dir": str(tmp_path / "state"),
                "folders": [{"path": str(tmp_path / "in")}],
            },
        )

        with pytest.raises(ConfigError) as caught:
            load_settings(config, {})

        assert (
            f"{config}: api.client_id: no client id is set; set api.client_id "
            "(or env OCRWATCH_CLIENT_ID), or set api.trial: true"
        ) == str(caught.value)
