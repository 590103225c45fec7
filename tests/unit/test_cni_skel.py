"""The CNI plugin protocol (weir.cni.skel.dispatch), as transcripts: env + stdin in, stdout + exit code out.

Every test drives ``dispatch`` with a dict environment and bytes on stdin, against a recording fake
plugin, and reads back exactly what a runtime would see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from weir.cni.skel import Call, dispatch
from weir.cni.spec import SUPPORTED_VERSIONS, CniError, Code, version_at_least

ALL = SUPPORTED_VERSIONS
BEFORE_CHECK = [v for v in ALL if not version_at_least(v, "0.4.0")]
WITH_CHECK = [v for v in ALL if version_at_least(v, "0.4.0")]
BEFORE_1_1 = [v for v in ALL if not version_at_least(v, "1.1.0")]

CONTAINER = "3f6940ab5ab43bc522569d15b23f8c1b"
NETNS = "/var/run/netns/cni-1234"
CNI_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=" + CONTAINER
ATTACHMENT_ENV = {
    "CNI_CONTAINERID": CONTAINER,
    "CNI_NETNS": NETNS,
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
    "CNI_ARGS": CNI_ARGS,
}

PREV_031 = {
    "cniVersion": "0.3.1",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
        {"name": "veth1a2b3c", "mac": "66:2f:31:8e:0d:5f"},
        {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": NETNS},
    ],
    "ips": [{"version": "4", "interface": 2, "address": "10.244.0.5/24", "gateway": "10.244.0.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
    "dns": {},
}
PREV_100 = {
    **PREV_031,
    "cniVersion": "1.0.0",
    "ips": [{"interface": 2, "address": "10.244.0.5/24", "gateway": "10.244.0.1"}],
}


def prev_result_in(version: str) -> dict[str, Any]:
    """PREV_031's content as a plugin speaking ``version`` writes it."""
    return dict(PREV_100 if version_at_least(version, "1.0.0") else PREV_031, cniVersion=version)


class Recorder:
    """A fake plugin: records each call; ADD answers ``add_result``; every verb raises ``fail`` if set."""

    def __init__(self, add_result: dict[str, Any] | None = None, fail: Exception | None = None) -> None:
        self.add_result = add_result
        self.fail = fail
        self.calls: list[Call] = []

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    def add(self, call: Call) -> dict[str, Any] | None:
        self._record(call)
        return self.add_result

    def delete(self, call: Call) -> None:
        self._record(call)

    def check(self, call: Call) -> None:
        self._record(call)

    def status(self, call: Call) -> None:
        self._record(call)

    def gc(self, call: Call) -> None:
        self._record(call)


@dataclass
class Transcript:
    stdout: bytes
    exit_code: int
    calls: list[Call] = field(default_factory=list)

    @property
    def answer(self) -> dict[str, Any] | None:
        return json.loads(self.stdout) if self.stdout else None

    @property
    def commands(self) -> list[str]:
        return [c.command for c in self.calls]

    def failed_with(self, code: int, version: str) -> dict[str, Any]:
        """Assert the spec's error answer and return it."""
        assert self.exit_code == 1
        answer = self.answer
        assert answer is not None
        assert answer["code"] == code, answer
        assert answer["cniVersion"] == version
        assert set(answer) <= {"cniVersion", "code", "msg", "details"}
        assert b"Traceback" not in self.stdout
        return answer


def netconf(version: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "k8s-pod-network", "type": "weir-cni", **extra}


def run(
    command: str,
    stdin: dict[str, Any] | bytes,
    plugin: Recorder | None = None,
    *,
    drop: tuple[str, ...] = (),
    **env: str,
) -> Transcript:
    plugin = plugin if plugin is not None else Recorder()
    full_env = {"CNI_COMMAND": command, **ATTACHMENT_ENV, **env}
    for name in drop:
        full_env.pop(name)
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    stdout, exit_code = dispatch(full_env, data, plugin)
    return Transcript(stdout, exit_code, plugin.calls)


# ---- VERSION -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_version_answers_in_the_asked_version(version: str) -> None:
    t = run("VERSION", {"cniVersion": version})
    assert (t.answer, t.exit_code, t.calls) == ({"cniVersion": version, "supportedVersions": list(ALL)}, 0, [])


@pytest.mark.parametrize("stdin", [b"", b"{}", b"not json", b'{"cniVersion": "0.2.0"}', b'{"cniVersion": 1}', b"[]"])
def test_version_without_a_usable_version_answers_in_1_1_0(stdin: bytes) -> None:
    t = run("VERSION", stdin)
    assert (t.answer, t.exit_code) == ({"cniVersion": "1.1.0", "supportedVersions": list(ALL)}, 0)


def test_version_needs_only_cni_command() -> None:
    stdout, exit_code = dispatch({"CNI_COMMAND": "VERSION"}, b"", Recorder())
    assert exit_code == 0
    assert json.loads(stdout)["supportedVersions"] == list(ALL)


# ---- ADD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_add_without_prev_result_prints_an_empty_result(version: str) -> None:
    t = run("ADD", netconf(version))
    assert (t.answer, t.exit_code, t.commands) == ({"cniVersion": version}, 0, ["ADD"])


@pytest.mark.parametrize("version", ALL)
def test_add_passes_prev_result_through_in_the_config_version(version: str) -> None:
    t = run("ADD", netconf(version, prevResult=prev_result_in(version)))
    assert (t.answer, t.exit_code) == (prev_result_in(version), 0)


def test_add_prints_a_0_3_1_prev_result_as_1_0_0() -> None:
    t = run("ADD", netconf("1.0.0", prevResult=PREV_031))
    assert t.answer == PREV_100
    assert t.answer is not None
    assert "version" not in t.answer["ips"][0]


def test_add_prints_a_1_0_0_prev_result_as_0_3_1() -> None:
    t = run("ADD", netconf("0.3.1", prevResult=PREV_100))
    assert t.answer == PREV_031
    assert t.answer is not None
    assert t.answer["ips"][0]["version"] == "4"


@pytest.mark.parametrize("version", ALL)
def test_add_prints_the_handlers_result_in_the_config_version(version: str) -> None:
    own = {"cniVersion": "1.1.0", "ips": [{"address": "fd00::5/64"}], "weir": {"captured": True}}
    t = run("ADD", netconf(version, prevResult=prev_result_in(version)), Recorder(add_result=own))
    ip = {"address": "fd00::5/64"} if version_at_least(version, "1.0.0") else {"version": "6", "address": "fd00::5/64"}
    assert t.answer == {"cniVersion": version, "ips": [ip], "weir": {"captured": True}}


def test_add_hands_the_parsed_invocation_to_the_plugin() -> None:
    config = netconf("1.1.0", prevResult=PREV_100, runtimeConfig={"portMappings": []}, extra={"k": "v"})
    t = run("ADD", config)
    (call,) = t.calls
    assert call.command == "ADD"
    assert (call.container_id, call.netns, call.ifname) == (CONTAINER, NETNS, "eth0")
    assert call.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert call.cni_args == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web-0",
        "K8S_POD_INFRA_CONTAINER_ID": CONTAINER,
    }
    assert call.netconf.raw == config
    assert call.netconf.prev_result == PREV_100
    assert call.netconf.runtime_config == {"portMappings": []}
    assert call.valid_attachments == []


def test_add_with_garbage_prev_result_fails_before_the_plugin_acts() -> None:
    t = run("ADD", netconf("1.0.0", prevResult={"ips": [{"address": "10.244.0.5"}]}))
    answer = t.failed_with(Code.DECODE_FAILURE, "1.0.0")
    assert answer["msg"] == "invalid result: ips[0].address is not an address in CIDR form (address/prefix-length)"
    assert t.calls == []


def test_add_with_a_garbage_handler_result_is_a_decode_failure() -> None:
    t = run("ADD", netconf("1.0.0"), Recorder(add_result={"ips": "10.0.0.1/8"}))
    assert t.failed_with(Code.DECODE_FAILURE, "1.0.0")["msg"] == "invalid result: ips must be a list, not a string"


def test_add_with_a_handler_answer_that_is_not_an_object_is_internal() -> None:
    plugin = Recorder(add_result=["not", "a", "result"])  # type: ignore[arg-type]
    t = run("ADD", netconf("1.0.0"), plugin)
    assert t.failed_with(Code.INTERNAL, "1.0.0")["msg"] == "ADD handler returned list, not a result object"


# ---- DEL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_del_succeeds_silently(version: str) -> None:
    t = run("DEL", netconf(version, prevResult=prev_result_in(version)))
    assert (t.stdout, t.exit_code, t.commands) == (b"", 0, ["DEL"])


@pytest.mark.parametrize("version", ALL)
def test_del_without_netns_or_prev_result_succeeds(version: str) -> None:
    t = run("DEL", netconf(version), drop=("CNI_NETNS",))
    assert (t.stdout, t.exit_code) == (b"", 0)
    assert t.calls[0].netns == ""


def test_del_does_not_judge_the_prev_result() -> None:
    t = run("DEL", netconf("1.0.0", prevResult={"ips": "garbage"}))
    assert (t.stdout, t.exit_code) == (b"", 0)


# ---- CHECK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", WITH_CHECK)
def test_check_succeeds_silently(version: str) -> None:
    t = run("CHECK", netconf(version, prevResult=prev_result_in(version)))
    assert (t.stdout, t.exit_code, t.commands) == (b"", 0, ["CHECK"])


@pytest.mark.parametrize("version", BEFORE_CHECK)
def test_check_is_refused_before_0_4_0(version: str) -> None:
    t = run("CHECK", netconf(version, prevResult=prev_result_in(version)))
    answer = t.failed_with(Code.INCOMPATIBLE_VERSION, version)
    assert answer["msg"] == "config version does not allow CHECK"
    assert answer["details"] == f"cniVersion is {version}; CHECK needs 0.4.0 or later"
    assert t.calls == []


# ---- STATUS and GC -------------------------------------------------------------------------------


def test_status_succeeds_with_only_cni_command() -> None:
    plugin = Recorder()
    stdout, exit_code = dispatch({"CNI_COMMAND": "STATUS"}, json.dumps(netconf("1.1.0")).encode(), plugin)
    assert (stdout, exit_code) == (b"", 0)
    (call,) = plugin.calls
    assert (call.command, call.container_id, call.netns, call.ifname, call.path) == ("STATUS", "", "", "", [])


def test_status_reports_the_plugins_unavailability() -> None:
    t = run("STATUS", netconf("1.1.0"), Recorder(fail=CniError(Code.NOT_AVAILABLE, "node agent not ready")))
    assert t.failed_with(Code.NOT_AVAILABLE, "1.1.0")["msg"] == "node agent not ready"


GC_ATTACHMENTS = [{"containerID": CONTAINER, "ifname": "eth0"}, {"containerID": "b7e2", "ifname": "net1"}]


def test_gc_passes_the_valid_attachments() -> None:
    stdin = json.dumps(netconf("1.1.0", **{"cni.dev/valid-attachments": GC_ATTACHMENTS})).encode()
    plugin = Recorder()
    stdout, exit_code = dispatch({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, stdin, plugin)
    assert (stdout, exit_code) == (b"", 0)
    (call,) = plugin.calls
    assert (call.command, call.path, call.valid_attachments) == ("GC", ["/opt/cni/bin"], GC_ATTACHMENTS)


def test_gc_reads_the_first_spec_1_1_key_too() -> None:
    t = run("GC", netconf("1.1.0", **{"cni.dev/attachments": GC_ATTACHMENTS[:1]}))
    assert t.exit_code == 0
    assert t.calls[0].valid_attachments == GC_ATTACHMENTS[:1]


def test_gc_with_no_valid_attachments_cleans_everything() -> None:
    t = run("GC", netconf("1.1.0", **{"cni.dev/valid-attachments": []}))
    assert (t.exit_code, t.calls[0].valid_attachments) == (0, [])


def test_gc_without_the_attachment_list_is_refused() -> None:
    t = run("GC", netconf("1.1.0"))
    answer = t.failed_with(Code.INVALID_NETWORK_CONFIG, "1.1.0")
    assert answer["msg"] == 'GC needs "cni.dev/valid-attachments"; it is missing'
    assert t.calls == []


@pytest.mark.parametrize(
    "attachments", [{"containerID": "a"}, [{"containerID": "a"}], [{"containerID": 1, "ifname": "e"}]]
)
def test_gc_with_malformed_attachments_is_refused(attachments: object) -> None:
    t = run("GC", netconf("1.1.0", **{"cni.dev/valid-attachments": attachments}))
    t.failed_with(Code.INVALID_NETWORK_CONFIG, "1.1.0")
    assert t.calls == []


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("version", BEFORE_1_1)
def test_status_and_gc_are_refused_before_1_1_0(command: str, version: str) -> None:
    t = run(command, netconf(version, **{"cni.dev/valid-attachments": []}))
    answer = t.failed_with(Code.INCOMPATIBLE_VERSION, version)
    assert answer["msg"] == f"config version does not allow {command}"
    assert t.calls == []


# ---- the environment -----------------------------------------------------------------------------

REQUIRED = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
    "GC": ["CNI_PATH"],
    "STATUS": [],
}


@pytest.mark.parametrize(("command", "variable"), [(c, v) for c, names in REQUIRED.items() for v in names])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_every_missing_variable_is_invalid_environment(command: str, variable: str, how: str) -> None:
    config = netconf("1.1.0", **{"cni.dev/valid-attachments": []})
    t = run(command, config, drop=(variable,)) if how == "absent" else run(command, config, **{variable: ""})
    answer = t.failed_with(Code.INVALID_ENVIRONMENT, "1.1.0")
    assert answer["msg"] == f"required env variables [{variable}] missing"
    assert t.calls == []


@pytest.mark.parametrize("command", [c for c, names in REQUIRED.items() if names])
def test_all_missing_variables_are_listed_in_order(command: str) -> None:
    stdout, exit_code = dispatch({"CNI_COMMAND": command}, json.dumps(netconf("1.1.0")).encode(), Recorder())
    assert exit_code == 1
    assert json.loads(stdout)["msg"] == f"required env variables [{','.join(REQUIRED[command])}] missing"


def test_missing_cni_command_is_invalid_environment() -> None:
    stdout, exit_code = dispatch({}, b"", Recorder())
    assert exit_code == 1
    assert json.loads(stdout) == {
        "cniVersion": "1.1.0",
        "code": 4,
        "msg": "required env variables [CNI_COMMAND] missing",
    }


@pytest.mark.parametrize("command", ["GET", "add", "DELETE", "VERSION "])
def test_unknown_command_is_invalid_environment(command: str) -> None:
    t = run(command, netconf("1.0.0"))
    answer = t.failed_with(Code.INVALID_ENVIRONMENT, "1.0.0")
    assert answer["msg"] == f"unknown CNI_COMMAND: {command}"
    assert answer["details"] == "expected one of ADD, DEL, CHECK, STATUS, GC, VERSION"


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
@pytest.mark.parametrize("cni_args", ["K8S_POD_NAME", "A=1;;B=2", "K8S_POD_NAME=a=b"])
def test_malformed_cni_args_is_invalid_environment(command: str, cni_args: str) -> None:
    t = run(command, netconf("1.0.0"), CNI_ARGS=cni_args)
    assert t.failed_with(Code.INVALID_ENVIRONMENT, "1.0.0")["msg"].startswith("CNI_ARGS: invalid pair ")
    assert t.calls == []


def test_cni_args_may_be_absent() -> None:
    t = run("ADD", netconf("1.0.0"), drop=("CNI_ARGS",))
    assert (t.exit_code, t.calls[0].cni_args) == (0, {})


@pytest.mark.parametrize("container_id", ["-abc", "a b", "a/b", "ab\n"])
def test_bad_container_id_is_invalid_environment(container_id: str) -> None:
    t = run("ADD", netconf("1.0.0"), CNI_CONTAINERID=container_id)
    assert t.failed_with(Code.INVALID_ENVIRONMENT, "1.0.0")["msg"] == (
        f"invalid characters in CNI_CONTAINERID {container_id!r}"
    )


@pytest.mark.parametrize("ifname", ["eth0123456789012", ".", "..", "eth/0", "eth:0", "eth 0"])
def test_bad_interface_name_is_invalid_environment(ifname: str) -> None:
    t = run("DEL", netconf("1.0.0"), CNI_IFNAME=ifname)
    assert t.failed_with(Code.INVALID_ENVIRONMENT, "1.0.0")["msg"].startswith(f"invalid CNI_IFNAME {ifname!r}: ")


def test_environment_is_checked_before_stdin() -> None:
    t = run("ADD", b"not json", drop=("CNI_NETNS",))
    t.failed_with(Code.INVALID_ENVIRONMENT, "1.1.0")


# ---- the network configuration -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
@pytest.mark.parametrize("stdin", [b"", b"{", b"\xff", b'{"cniVersion": "1.0.0"'])
def test_bad_json_is_a_decode_failure_answered_in_1_1_0(command: str, stdin: bytes) -> None:
    t = run(command, stdin)
    assert t.failed_with(Code.DECODE_FAILURE, "1.1.0")["msg"] == "network configuration is not valid JSON"
    assert t.calls == []


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("key", ["name", "type"])
def test_missing_name_or_type_is_invalid_config_answered_in_the_config_version(version: str, key: str) -> None:
    config = netconf(version)
    del config[key]
    t = run("ADD", config)
    assert t.failed_with(Code.INVALID_NETWORK_CONFIG, version)["msg"] == f'network configuration has no "{key}"'
    assert t.calls == []


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "1.2.0"])
def test_unsupported_version_is_incompatible_answered_in_1_1_0(command: str, version: str) -> None:
    t = run(command, netconf(version))
    answer = t.failed_with(Code.INCOMPATIBLE_VERSION, "1.1.0")
    assert answer["msg"] == f"unsupported cniVersion {version!r}"
    assert answer["details"] == "this plugin supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    assert t.calls == []


# ---- plugin failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_a_cni_error_from_the_plugin_is_printed_as_it_is(command: str, version: str) -> None:
    if version == "0.4.0" and command in ("STATUS", "GC"):
        version = "1.1.0"
    busy = CniError(Code.TRY_AGAIN_LATER, "node agent is busy", "retry in 1s")
    t = run(command, netconf(version, **{"cni.dev/valid-attachments": []}), Recorder(fail=busy))
    answer = t.failed_with(Code.TRY_AGAIN_LATER, version)
    assert answer == {"cniVersion": version, "code": 11, "msg": "node agent is busy", "details": "retry in 1s"}
    assert t.commands == [command]


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_an_unexpected_exception_becomes_internal_with_its_text(command: str) -> None:
    t = run(command, netconf("1.1.0", **{"cni.dev/valid-attachments": []}), Recorder(fail=RuntimeError("boom")))
    answer = t.failed_with(Code.INTERNAL, "1.1.0")
    assert answer == {
        "cniVersion": "1.1.0",
        "code": 999,
        "msg": "unexpected error in weir-cni",
        "details": "RuntimeError: boom",
    }


def test_plugin_codes_pass_through_unchanged() -> None:
    t = run("ADD", netconf("1.0.0"), Recorder(fail=CniError(Code.CAPTURE_FAILED, "iptables-restore failed")))
    t.failed_with(Code.CAPTURE_FAILED, "1.0.0")


def test_stdout_is_one_json_document() -> None:
    for t in (run("ADD", netconf("1.0.0", prevResult=PREV_100)), run("ADD", b"{")):
        assert t.stdout.endswith(b"\n")
        assert isinstance(json.loads(t.stdout), dict)


def test_a_result_that_cannot_be_written_as_json_is_internal_not_a_traceback() -> None:
    t = run("ADD", netconf("1.0.0"), Recorder(add_result={"weir": {1, 2}}))
    assert t.failed_with(Code.INTERNAL, "1.0.0")["details"].startswith("TypeError: ")
