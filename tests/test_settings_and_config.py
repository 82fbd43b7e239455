"""Config parsing, profile resolution and the one-sentence config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from ocrwatch.cli import main
from ocrwatch.config import Credentials, ProfileSpec, parse_config, resolve_credentials
from ocrwatch.errors import ConfigError
from ocrwatch.profiles import (
    Override,
    ProfileBook,
    parse_override,
    resolve,
    resolve_profile,
)
from ocrwatch.settings import LANGUAGES, Settings

from .conftest import SECRET

BASE: dict[str, Any] = {
    "api": {"base_url": "http://127.0.0.1:9", "trial": True},
    "state_dir": "/tmp/ocrwatch-state",
    "folders": [{"path": "/srv/in"}],
}


def with_(**changes):
    return {**BASE, **changes}


class TestParseConfig:
    def test_minimal_config_gets_documented_defaults(self):
        """Defaults come from the model: concurrency 4, settle 2 s, polling off, an empty default profile."""
        config = parse_config(BASE, "c.yaml")

        folder = config.folders[0]
        assert (4, 2.0, False, 10.0, True) == (
            config.api.concurrency,
            folder.settle_seconds,
            folder.polling,
            folder.poll_interval,
            folder.recursive,
        )
        assert "default" in config.profiles
        assert (
            "https://api.aspose.cloud/connect/token"
            == parse_config(
                {**BASE, "api": {"trial": True}}, "c"
            ).api.resolved_token_url
        )

    def test_a_retired_key_is_ignored_with_a_warning_naming_it(self):
        """`api.upload_processes` (gone with the upload processes) must not stop a service
        after an upgrade: it is ignored, and the log says to remove it."""
        from structlog.testing import capture_logs

        with capture_logs() as logs:
            config = parse_config(
                with_(api={"upload_processes": True, "concurrency": 3}), "c.yaml"
            )

        assert 3 == config.api.concurrency
        assert [("config.key_ignored", "api.upload_processes", "remove it")] == [
            (e["event"], e["key"], e["fix"]) for e in logs
        ]

    @pytest.mark.parametrize(
        ("api", "expected"),
        [
            pytest.param(
                {"proxy": "socks5://127.0.0.1:1080"},
                "c.yaml: api.proxy: not an HTTP(S) proxy URL (SOCKS is not supported)",
                id="socks-proxy",
            ),
            pytest.param(
                {"ca_bundle": "/nonexistent/ca.pem"},
                "c.yaml: api.ca_bundle: /nonexistent/ca.pem is not a file; give the path",
                id="missing-ca-bundle",
            ),
        ],
    )
    def test_proxy_and_ca_mistakes_are_config_errors(self, api, expected):
        """A proxy ocrwatch cannot use, or a CA file that is not there, stops at load time."""
        with pytest.raises(ConfigError) as info:
            parse_config(with_(api=api), "c.yaml")

        assert str(info.value).startswith(expected)

    def test_all_154_languages_are_accepted(self):
        """Every Language enum value of the API is a valid profile language."""
        assert 154 == len(set(LANGUAGES))
        for language in LANGUAGES:
            parse_config(with_(profiles={"p": {"language": language}}), "c.yaml")

    def test_rotate_accepted_in_either_case_and_sent_capitalised(self):
        """YAML may say `rotate` (docs) or `Rotate` (SDKs); the wire always says `Rotate`."""
        lower = parse_config(with_(profiles={"default": {"rotate": 90}}), "c").profiles[
            "default"
        ]
        upper = parse_config(
            with_(profiles={"default": {"Rotate": 180}}), "c"
        ).profiles["default"]

        assert {"Rotate": 90} == lower.to_settings().to_wire()
        assert {"Rotate": 180} == upper.to_settings().to_wire()

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            pytest.param(
                with_(profiles={"invoices-de": {"langauge": "German"}}),
                "c.yaml: profiles.invoices-de.langauge: unknown key; did you mean `language`?",
                id="unknown-profile-key",
            ),
            pytest.param(
                with_(profiles={"p": {"language": "Germna"}}),
                "c.yaml: profiles.p.language: unknown language `Germna`; did you mean `German`?",
                id="unknown-language",
            ),
            pytest.param(
                with_(profiles={"p": {"language": "Deutsch"}}),
                "c.yaml: profiles.p.language: unknown language `Deutsch`; did you mean `German`?",
                id="native-language-name",
            ),
            pytest.param(
                with_(profiles={"p": {"language": "Nederlands"}}),
                "c.yaml: profiles.p.language: unknown language `Nederlands`; did you mean `Dutch`?",
                id="native-language-name-2",
            ),
            pytest.param(
                with_(profiles={"p": {"rotate": 90, "Rotate": 180}}),
                "c.yaml: profiles.p.rotate: set twice, as `Rotate` and as `rotate`; keep one of them",
                id="rotate-twice",
            ),
            pytest.param(
                {**BASE, "folders": []},
                "c.yaml: folders: no folder is listed; add at least one, e.g. `- path: /srv/scans/inbox`",
                id="empty-folders",
            ),
            pytest.param(
                with_(profiles={"p": {"resultType": "text"}}),
                "c.yaml: profiles.p.resultType: unknown resultType `text`; did you mean `Text`?",
                id="enum-case",
            ),
            pytest.param(
                with_(profiles={"p": {"dsrMode": "Region"}}),
                "c.yaml: profiles.p.dsrMode: unknown dsrMode `Region`; did you mean `Regions`?",
                id="dsr-mode",
            ),
            pytest.param(
                with_(profiles={"p": {"makeSpellCheck": "yes"}}),
                "c.yaml: profiles.p.makeSpellCheck: Input should be a valid boolean; fix the value",
                id="wrong-type",
            ),
            pytest.param(
                {**BASE, "folders": [{"path": "/srv/in", "setle_seconds": 3}]},
                "c.yaml: folders[0].setle_seconds: unknown key; did you mean `settle_seconds`?",
                id="folder-key",
            ),
            pytest.param(
                {**BASE, "folders": [{"path": "/srv/in", "settle_seconds": -1}]},
                "c.yaml: folders[0].settle_seconds: Input should be greater than or equal to 0; fix the value",
                id="negative",
            ),
            pytest.param(
                {"api": {"trial": True}},
                "c.yaml: folders: required key is missing; add it",
                id="no-folders",
            ),
            pytest.param(
                {
                    **BASE,
                    "folders": [{"path": "/srv/in", "profile": "invoice"}],
                    "profiles": {"invoices": {}},
                },
                "c.yaml: folders[0].profile: unknown profile `invoice`; did you mean `invoices`?",
                id="missing-profile",
            ),
            pytest.param(
                with_(profiles={"a": {"extends": "b"}, "b": {"extends": "a"}}),
                "c.yaml: profiles.a.extends: cycle a -> b -> a; remove one `extends`",
                id="cycle",
            ),
            pytest.param(
                {**BASE, "api": {"base_url": "http://ocr.example.com", "trial": True}},
                "c.yaml: api.base_url: plain http to `ocr.example.com` would send the token in clear; use https",
                id="plain-http",
            ),
            pytest.param(
                {**BASE, "api": {"base_url": "https://u:pw@ocr.example.com"}},
                "c.yaml: api.base_url: a user or password in the URL is not supported; put "
                "the credentials in api.client_id and the client secret, and a proxy's in "
                "api.proxy",
                id="userinfo-in-url",
            ),
            pytest.param(
                {**BASE, "keep_days": 1, "dedupe_window": "7d"},
                "c.yaml: keep_days: 1 days is shorter than dedupe_window (7 days): the prune "
                "would forget content the dedupe still looks up; set keep_days to at least 7",
                id="keep-shorter-than-dedupe",
            ),
            pytest.param(
                {**BASE, "apii": {}},
                "c.yaml: apii: unknown key; did you mean `api`?",
                id="top-level",
            ),
            pytest.param(
                {**BASE, "state_dir": "/srv/in/.state"},
                "c.yaml: state_dir: /srv/in/.state is inside folders[0].path; put state_dir outside every watched folder",
                id="state-in-folder",
            ),
        ],
    )
    def test_mistake_is_one_sentence_naming_the_key(self, data, expected):
        """Each class of mistake names the file, the dotted key, the problem and the nearest valid name."""
        with pytest.raises(ConfigError) as info:
            parse_config(data, "c.yaml")

        assert expected == str(info.value)
        assert 2 == info.value.exit_code

    def test_cli_exits_2_with_one_line_and_no_traceback(self, tmp_path, capsys):
        """`check` on a bad config prints one stderr line and exits 2."""
        path = tmp_path / "config.yaml"
        path.write_text(
            "folders:\n  - path: /srv/in\nprofiles:\n  invoices-de:\n    langauge: German\napi: {trial: true}\n"
        )

        code = main(["check", "-c", str(path)])

        err = capsys.readouterr().err.strip().splitlines()
        assert 2 == code
        assert [
            f"ocrwatch: {path}: profiles.invoices-de.langauge: unknown key; did you mean `language`?"
        ] == err

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            pytest.param(
                "folders: [\n", "YAML syntax error at line 2", id="yaml-syntax"
            ),
            pytest.param(
                "- just\n- a list\n", "must be a YAML mapping", id="not-mapping"
            ),
            pytest.param(
                "folders: []\nnote: 2024-99-99\n",
                "a value cannot be read (month must be in 1..12); quote it",
                id="impossible-date",
            ),
            pytest.param(
                f"folders: []\nnote: {'9' * 5000}\n",
                "a value cannot be read (Exceeds the limit",
                id="huge-integer",
            ),
        ],
    )
    def test_unparseable_yaml_is_a_config_error(self, tmp_path, capsys, text, fragment):
        """Broken YAML gets exit 2 and a sentence, not a traceback."""
        path = tmp_path / "config.yaml"
        path.write_text(text)

        code = main(["check", "-c", str(path)])

        err = capsys.readouterr().err
        assert 2 == code
        assert fragment in err
        assert "Traceback" not in err

    def test_missing_config_file_says_how_to_point_at_one(self, tmp_path, capsys):
        """A missing config file names the path and the -c / OCRWATCH_CONFIG fix."""
        code = main(["check", "-c", str(tmp_path / "nope.yaml")])

        assert 2 == code
        assert (
            "config file not found; pass -c PATH or set OCRWATCH_CONFIG"
            in capsys.readouterr().err
        )


class TestCredentials:
    def config(self, **api: object):
        return parse_config(
            {
                **BASE,
                "api": {"base_url": "http://127.0.0.1:9", "client_id": "id", **api},
            },
            "c.yaml",
        )

    def test_env_secret_wins_over_file_credential_and_inline(self, tmp_path):
        """Order: env, client_secret_file, $CREDENTIALS_DIRECTORY/client_secret, inline."""
        secret_file = tmp_path / "secret"
        secret_file.write_text("from-file\n")
        secret_file.chmod(0o600)
        creds_dir = tmp_path / "creds"
        creds_dir.mkdir()
        (creds_dir / "client_secret").write_text("from-systemd")
        config = self.config(
            client_secret="inline", client_secret_file=str(secret_file)
        )
        no_file = self.config(client_secret="inline")

        env_first = resolve_credentials(
            config, {"OCRWATCH_CLIENT_SECRET": "from-env"}, "c"
        )
        file_next = resolve_credentials(
            config, {"CREDENTIALS_DIRECTORY": str(creds_dir)}, "c"
        )
        systemd_next = resolve_credentials(
            no_file, {"CREDENTIALS_DIRECTORY": str(creds_dir)}, "c"
        )
        inline_last = resolve_credentials(no_file, {}, "c")

        secrets = [
            c.client_secret.get_secret_value()
            for c in (env_first, file_next, systemd_next, inline_last)
            if c
        ]
        assert ["from-env", "from-file", "from-systemd", "inline"] == secrets

    def test_no_credentials_and_no_trial_says_what_to_set(self):
        """Without a secret, the error names every way to provide one, and trial mode."""
        with pytest.raises(
            ConfigError,
            match=r"^c.yaml: no client secret found \(api.client_secret_file is not set; "
            r"\$CREDENTIALS_DIRECTORY is not set\); point api.client_secret_file .* "
            r"systemd credential `client_secret` .* OCRWATCH_CLIENT_SECRET, or set api.trial: true$",
        ):
            resolve_credentials(self.config(), {}, "c.yaml")

    def test_group_readable_secret_file_is_warned_about(self, tmp_path):
        """A secret file others can read is accepted but logged as a warning naming the fix."""
        from structlog.testing import capture_logs

        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET)
        secret_file.chmod(0o644)

        with capture_logs() as logs:
            resolve_credentials(
                self.config(client_secret_file=str(secret_file)), {}, "c"
            )

        assert [("secret.file_permissive", "chmod 600")] == [
            (e["event"], e["fix"]) for e in logs
        ]
        assert SECRET not in repr(logs)

    def test_secret_never_in_repr_or_str(self):
        """Config and credential objects print the secret masked."""
        config = self.config(client_secret=SECRET)
        creds = Credentials("id", SecretStr(SECRET))

        assert SECRET not in repr(config) + str(config) + repr(creds) + str(creds)


class TestProfiles:
    def test_extends_chain_applies_base_first(self):
        """A child profile overrides its parent key by key and inherits the rest."""
        table = {
            "default": ProfileSpec.model_validate(
                {"language": "English", "resultType": "Text"}
            ),
            "de": ProfileSpec.model_validate(
                {"extends": "default", "language": "German"}
            ),
            "de-spell": ProfileSpec.model_validate(
                {"extends": "de", "makeSpellCheck": True}
            ),
        }

        settings = resolve_profile("de-spell", table)

        assert (
            Settings(language="German", result_type="Text", make_spell_check=True)
            == settings
        )

    def test_nearest_override_wins_key_by_key(self):
        """Override files apply root first; the nearest wins, and `profile:` switches the base."""
        table = {
            "default": ProfileSpec.model_validate(
                {"language": "English", "resultType": "Text"}
            ),
            "scans": ProfileSpec.model_validate(
                {"language": "French", "dsrMode": "Regions"}
            ),
        }
        overrides = [
            Override(
                Path("/r/.ocrwatch.yaml"),
                parse_override(
                    {"profile": "scans", "rotate": 90}, Path("/r/.ocrwatch.yaml")
                ),
            ),
            Override(
                Path("/r/a/.ocrwatch.yaml"),
                parse_override({"language": "German"}, Path("/r/a/.ocrwatch.yaml")),
            ),
        ]

        resolved = resolve("default", table, overrides)

        assert "scans" == resolved.profile
        assert {
            "language": "German",
            "dsrMode": "Regions",
            "Rotate": 90,
        } == resolved.settings.to_wire()

    @pytest.mark.parametrize(
        ("configured", "switched_to", "hook"),
        [
            pytest.param("office", "private", (), id="switch-to-no-hook"),
            pytest.param("private", "office", (), id="never-switched-on"),
            pytest.param("office", "admin", (), id="never-another-hook"),
            pytest.param("office", "office-de", ("/bin/done",), id="same-hook-kept"),
        ],
    )
    def test_a_profile_switch_turns_a_hook_only_off(
        self, configured, switched_to, hook
    ):
        """A `.ocrwatch.yaml`'s `profile:` runs the effective profile's hook only if the
        folder's configured profile has the same one: anyone on the share writes that file."""
        table = {
            "office": ProfileSpec.model_validate(
                {"fetch_results": True, "on_complete": ["/bin/done"]}
            ),
            "office-de": ProfileSpec.model_validate(
                {"extends": "office", "language": "German"}
            ),
            "admin": ProfileSpec.model_validate({"on_complete": ["/bin/wipe"]}),
            "private": ProfileSpec.model_validate({"fetch_results": True}),
        }
        where = Path("/r/.ocrwatch.yaml")
        overrides = [Override(where, parse_override({"profile": switched_to}, where))]

        resolved = resolve(configured, table, overrides)

        assert (switched_to, hook) == (resolved.profile, resolved.fetch.on_complete)

    def test_override_naming_unknown_profile_is_config_error(self):
        """An override's `profile:` must exist; the error names the file."""
        overrides = [
            Override(
                Path("/r/.ocrwatch.yaml"),
                parse_override({"profile": "scan"}, Path("/r/.ocrwatch.yaml")),
            )
        ]

        with pytest.raises(
            ConfigError, match=r"/r/.ocrwatch.yaml: profile: unknown profile `scan`"
        ):
            resolve("default", {"default": ProfileSpec()}, overrides)

    def test_book_rereads_an_edited_override_file(self, tmp_path):
        """An edit to `.ocrwatch.yaml` applies to the next resolution without a restart."""
        config = parse_config({**BASE, "folders": [{"path": str(tmp_path)}]}, "c")
        book = ProfileBook(config)
        sub = tmp_path / "de"
        sub.mkdir()
        override = sub / ".ocrwatch.yaml"
        override.write_text("language: German\n")
        before = book.resolve_for(sub / "a.png", tmp_path, "default")

        override.write_text("language: French\nRotate: 270\n")
        after = book.resolve_for(sub / "b.png", tmp_path, "default")

        assert ({"language": "German"}, {"language": "French", "Rotate": 270}) == (
            before.settings.to_wire(),
            after.settings.to_wire(),
        )

    def test_book_raises_for_an_invalid_override_naming_file_and_key(self, tmp_path):
        """An invalid `.ocrwatch.yaml` is a ConfigError naming its path and key."""
        config = parse_config({**BASE, "folders": [{"path": str(tmp_path)}]}, "c")
        (tmp_path / ".ocrwatch.yaml").write_text("langauge: German\n")

        with pytest.raises(
            ConfigError,
            match=r"\.ocrwatch\.yaml: langauge: unknown key; did you mean `language`\?",
        ):
            ProfileBook(config).resolve_for(tmp_path / "a.png", tmp_path, "default")
