"""Fast tests of the binary build recipes and machinery: nothing here runs go or gcc."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest

from fixtures.kind import gobuild
from fixtures.kind.gobuild import (
    DEBIAN_BUILD_DEPS,
    STAMP_FILE,
    BuildError,
    BuiltBinaries,
    MissingBinaryError,
    Replace,
    Toolchain,
    check_build_tools,
    pause_cflags,
    recipe_digest,
    render_ldflags,
    select_recipes,
    staging_replaces,
    wrapper_gomod,
    wrapper_tools_go,
)
from fixtures.kind.gomodules import (
    RECIPES,
    CRecipe,
    GoRecipe,
    MainPackage,
    ModulePin,
    Recipe,
    Stamp,
    go_default_binary_name,
    recipe_named,
)
from fixtures.kind.progress import Progress
from fixtures.kind.versions import PINS

# ------------------------------------------------------------------------------------------------ recipe table


def test_recipe_names_are_unique_and_binaries_non_empty() -> None:
    names = [r.name for r in RECIPES]
    assert len(names) == len(set(names))
    for recipe in RECIPES:
        assert recipe.binaries, recipe.name
        assert all(recipe.binaries), recipe.name
        assert recipe.module and recipe.version, recipe.name


def test_binary_names_are_unique_across_components() -> None:
    # BuiltBinaries.path looks a binary up by name alone.
    binaries = [b for r in RECIPES for b in r.binaries]
    assert len(binaries) == len(set(binaries))


def test_every_component_the_cluster_needs_is_in_the_table() -> None:
    binaries = {b for r in RECIPES for b in r.binaries}
    assert binaries >= {
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubeadm", "kubectl",
        "agnhost", "pause", "etcd", "etcdctl", "etcdutl", "coredns", "containerd", "ctr", "containerd-shim-runc-v2",
        "runc", "crictl", "host-local", "loopback", "ptp", "bridge", "portmap", "flanneld", "local-path-provisioner", "kind",
    }


def test_go_recipes_build_each_main_to_a_distinct_file_in_one_directory() -> None:
    for recipe in RECIPES:
        if isinstance(recipe, GoRecipe):
            defaults = [go_default_binary_name(m.package) for m in recipe.mains]
            assert len(defaults) == len(set(defaults)), recipe.name
            assert all(m.package == recipe.module or m.package.startswith(recipe.module + "/")
                       or any(m.package == p.path for p in recipe.pins) for m in recipe.mains), recipe.name


def test_recipes_follow_the_pins() -> None:
    assert recipe_named("kubernetes").version == PINS.kubernetes
    assert recipe_named("etcd").version == PINS.etcd
    etcd = recipe_named("etcd")
    assert isinstance(etcd, GoRecipe)
    assert {p.version for p in etcd.pins} == {PINS.etcd}
    assert recipe_named("flannel").version == PINS.flannel
    assert recipe_named("crictl").version == PINS.crictl_built


def test_runc_is_cgo_with_seccomp_and_declares_its_debian_deps() -> None:
    runc = recipe_named("runc")
    assert isinstance(runc, GoRecipe)
    assert runc.cgo and "seccomp" in runc.tags
    assert {"libseccomp-dev", "pkg-config", "gcc"} <= set(runc.debian_deps)
    assert runc.pkg_config == ("libseccomp",)
    # flannel's udp backend is cgo upstream too; everything else is static.
    others = [r for r in RECIPES if isinstance(r, GoRecipe) and r.name not in ("runc", "flannel")]
    assert not any(r.cgo for r in others)


def test_debian_build_deps_cover_every_recipe() -> None:
    assert {"gcc", "libc6-dev", "libseccomp-dev", "pkg-config"} <= set(DEBIAN_BUILD_DEPS)
    for recipe in RECIPES:
        assert set(recipe.debian_deps) <= set(DEBIAN_BUILD_DEPS)
    assert list(DEBIAN_BUILD_DEPS) == sorted(set(DEBIAN_BUILD_DEPS))


def test_recipe_named_rejects_unknown_names() -> None:
    with pytest.raises(KeyError, match="use one of kubernetes"):
        recipe_named("kindnetd")


def test_select_recipes_keeps_table_order_and_rejects_unknown() -> None:
    assert [r.name for r in select_recipes(["kind", "etcd"])] == ["etcd", "kind"]
    assert select_recipes(None) == RECIPES
    with pytest.raises(ValueError, match="unknown components \\['nope'\\]"):
        select_recipes(["etcd", "nope"])


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("go.etcd.io/etcd/server/v3", "server"),
        ("go.etcd.io/etcd/etcdctl/v3", "etcdctl"),
        ("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("example.com/tool/v1", "v1"),
        ("example.com/tool/v10", "tool"),
        ("sigs.k8s.io/kind", "kind"),
    ],
)
def test_go_default_binary_name(path: str, name: str) -> None:
    assert go_default_binary_name(path) == name


# ------------------------------------------------------------------------------------------------ wrapper modules

SAMPLE_KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.24.0

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
)

replace k8s.io/kms => ./staging/src/k8s.io/kms

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\t// k8s.io/commented => ./staging/src/k8s.io/commented
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // the client
\tgithub.com/example/fork => github.com/other/fork v1.2.3
)

replace example.com/local => ../local
"""


def test_staging_replaces_come_from_the_gomod_text() -> None:
    replaces = staging_replaces(SAMPLE_KUBERNETES_GOMOD, "v1.34.3")
    assert replaces == (
        Replace("k8s.io/kms", "k8s.io/kms", "v0.34.3"),
        Replace("k8s.io/api", "k8s.io/api", "v0.34.3"),
        Replace("k8s.io/client-go", "k8s.io/client-go", "v0.34.3"),
    )


def test_staging_replaces_keep_a_prerelease_suffix() -> None:
    replaces = staging_replaces(SAMPLE_KUBERNETES_GOMOD, "v1.35.0-rc.1")
    assert {r.version for r in replaces} == {"v0.35.0-rc.1"}


def test_staging_replaces_reject_a_foreign_gomod_and_version() -> None:
    with pytest.raises(ValueError, match="not k8s.io/kubernetes"):
        staging_replaces("module example.com/x\n\ngo 1.24\n", "v1.34.3")
    with pytest.raises(ValueError, match="not a Kubernetes v1"):
        staging_replaces(SAMPLE_KUBERNETES_GOMOD, "v2.0.0")


def test_wrapper_gomod_text() -> None:
    text = wrapper_gomod(
        "kubeha.local/gobuild/etcd",
        "1.24.3",
        [ModulePin("go.etcd.io/etcd/server/v3", "v3.6.5"), ModulePin("go.etcd.io/etcd/api/v3", "v3.6.5")],
        [Replace("go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/api/v3", "v3.6.5")],
    )
    assert text == (
        "module kubeha.local/gobuild/etcd\n\ngo 1.24.3\n\nrequire (\n"
        "\tgo.etcd.io/etcd/server/v3 v3.6.5\n\tgo.etcd.io/etcd/api/v3 v3.6.5\n)\n\n"
        "replace (\n\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.5\n)\n"
    )
    assert "replace" not in wrapper_gomod("m", "1.24.3", [ModulePin("a.b/c", "v1.0.0")], [])


def test_wrapper_gomod_for_kubernetes_replaces_every_staging_module() -> None:
    replaces = staging_replaces(SAMPLE_KUBERNETES_GOMOD, "v1.34.3")
    text = wrapper_gomod("kubeha.local/gobuild/kubernetes", "1.24.3", [ModulePin("k8s.io/kubernetes", "v1.34.3")],
                         replaces)
    for module in ("k8s.io/kms", "k8s.io/api", "k8s.io/client-go"):
        assert f"\t{module} => {module} v0.34.3\n" in text
    assert "./staging" not in text and "github.com/other/fork" not in text


def test_wrapper_tools_go_is_only_seen_with_the_tools_tag() -> None:
    text = wrapper_tools_go(["k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kubeadm"])
    assert text.startswith("//go:build tools\n\npackage tools\n")
    assert '\t_ "k8s.io/kubernetes/cmd/kubelet"\n\t_ "k8s.io/kubernetes/cmd/kubeadm"\n' in text


# ------------------------------------------------------------------------------------------------ link flags

FIELDS: Mapping[str, str | None] = {
    "version": "v1.34.3", "version_no_v": "1.34.3", "major": "1", "minor": "34",
    "commit": "0123456789abcdef", "commit_short": "0123456", "build_date": "2025-12-09T14:59:13Z",
}


def test_kubernetes_ldflags_stamp_both_version_packages() -> None:
    recipe = recipe_named("kubernetes")
    assert isinstance(recipe, GoRecipe)
    flags = render_ldflags(recipe, FIELDS).split()
    assert flags[:2] == ["-s", "-w"]
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert f"-X={package}.gitVersion=v1.34.3" in flags
        assert f"-X={package}.gitMajor=1" in flags
        assert f"-X={package}.gitMinor=34" in flags
        assert f"-X={package}.gitTreeState=clean" in flags
        assert f"-X={package}.buildDate=2025-12-09T14:59:13Z" in flags
        assert f"-X={package}.gitCommit=0123456789abcdef" in flags


def test_stamps_needing_an_unknown_commit_are_left_out() -> None:
    recipe = recipe_named("kubernetes")
    assert isinstance(recipe, GoRecipe)
    flags = render_ldflags(recipe, {**FIELDS, "commit": None, "commit_short": None})
    assert "gitCommit" not in flags and "gitVersion=v1.34.3" in flags


def test_every_recipe_stamp_renders() -> None:
    for recipe in RECIPES:
        if isinstance(recipe, GoRecipe):
            rendered = render_ldflags(recipe, FIELDS)
            assert rendered.count("-X=") == len(recipe.stamps), recipe.name


def test_a_stamp_with_a_space_or_unknown_field_is_refused() -> None:
    spaced = GoRecipe("x", "example.com/x", "v1.0.0", (MainPackage("example.com/x", "x"),),
                      stamps=(Stamp("main.v", "a b"),))
    with pytest.raises(ValueError, match="cannot"):
        render_ldflags(spaced, FIELDS)
    unknown = GoRecipe("x", "example.com/x", "v1.0.0", (MainPackage("example.com/x", "x"),),
                       stamps=(Stamp("main.v", "{flavour}"),))
    with pytest.raises(ValueError, match="unknown fields \\['flavour'\\]"):
        render_ldflags(unknown, FIELDS)


SAMPLE_PAUSE_MAKEFILE = """\
REGISTRY ?= staging-k8s.gcr.io
TAG ?= 3.10.1
REV = $(shell git describe --contains --always --match='v*')
CFLAGS = -Os -Wall -Werror -static -DVERSION=v$(TAG)-$(REV)
"""


def test_pause_cflags_come_from_the_makefile() -> None:
    assert pause_cflags(SAMPLE_PAUSE_MAKEFILE, "v1.34.3") == [
        "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.10.1-v1.34.3",
    ]
    with pytest.raises(ValueError, match="ARCH"):
        pause_cflags(SAMPLE_PAUSE_MAKEFILE.replace("$(REV)", "$(ARCH)"), "v1.34.3")
    with pytest.raises(ValueError, match="TAG"):
        pause_cflags("CFLAGS = -Os\n", "v1.34.3")


# ------------------------------------------------------------------------------------------------ stamps and skips

TOOLCHAIN = Toolchain(go="/nonexistent/go", go_version="go1.26.0", goos="linux", goarch="amd64", goamd64="v1",
                      env={"PATH": ""})
ALPHA = GoRecipe("alpha", "example.com/alpha", "v1.0.0",
                 (MainPackage("example.com/alpha/cmd/a", "a"), MainPackage("example.com/alpha/cmd/b", "b")))
BETA = CRecipe("beta", "example.com/beta", "v2.0.0", "src/beta.c", "src/Makefile", "beta")


class FakeBuilder:
    """Writes the recipe's binaries as small executable scripts and counts its calls per component."""

    def __init__(self, *, skip: str | None = None, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.skip = skip
        self.fail = fail

    def __call__(self, recipe: Recipe, staged: Path, wrapper_dir: Path, toolchain: Toolchain,
                 progress: Progress) -> Mapping[str, str]:
        self.calls.append(recipe.name)
        for binary in recipe.binaries:
            if binary == self.skip:
                continue
            path = staged / binary
            path.write_text(f"#!/bin/sh\necho {binary} {len(self.calls)}\n")
            path.chmod(0o755)
            if self.fail:
                raise BuildError(recipe.name, "go build exited 1", command=["go", "build"], output="boom")
        return {"version": recipe.version}


def _build(tmp_path: Path, builder: FakeBuilder, *, recipes: tuple[Recipe, ...] = (ALPHA, BETA),
           rebuild: bool = False, toolchain: Toolchain = TOOLCHAIN) -> BuiltBinaries:
    return gobuild._build_components(recipes, tmp_path / "bin", tmp_path / "work", Progress(stream=io.StringIO()),
                                     toolchain, rebuild=rebuild, builder=builder)


def test_first_build_writes_binaries_and_stamps(tmp_path: Path) -> None:
    builder = FakeBuilder()
    built = _build(tmp_path, builder)
    assert builder.calls == ["alpha", "beta"]
    assert built.path("a") == tmp_path / "bin" / "alpha" / "a"
    assert built.path("beta").read_text() == "#!/bin/sh\necho beta 2\n"
    stamp = json.loads((tmp_path / "bin" / "alpha" / STAMP_FILE).read_text())
    assert stamp["digest"] == recipe_digest(ALPHA, TOOLCHAIN.ident)
    assert stamp["binaries"] == ["a", "b"] and stamp["version"] == "v1.0.0"
    assert stat.S_IMODE((tmp_path / "bin" / "alpha").stat().st_mode) == 0o755
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["alpha", "beta"]


def test_up_to_date_components_are_skipped(tmp_path: Path) -> None:
    _build(tmp_path, FakeBuilder())
    again = FakeBuilder()
    progress_out = io.StringIO()
    built = gobuild._build_components((ALPHA, BETA), tmp_path / "bin", tmp_path / "work",
                                      Progress(stream=progress_out), TOOLCHAIN, rebuild=False, builder=again)
    assert again.calls == []
    assert "build alpha: skipped (up to date)" in progress_out.getvalue()
    assert built.path("b").is_file()


def test_rebuild_forces_a_build(tmp_path: Path) -> None:
    _build(tmp_path, FakeBuilder())
    again = FakeBuilder()
    _build(tmp_path, again, rebuild=True)
    assert again.calls == ["alpha", "beta"]


def test_a_changed_recipe_or_toolchain_triggers_a_rebuild(tmp_path: Path) -> None:
    _build(tmp_path, FakeBuilder())
    newer_go = dataclasses.replace(TOOLCHAIN, go_version="go1.26.1")
    again = FakeBuilder()
    _build(tmp_path, again, toolchain=newer_go)
    assert again.calls == ["alpha"]  # the C recipe does not depend on the Go version
    bumped = dataclasses.replace(ALPHA, version="v1.0.1")
    third = FakeBuilder()
    _build(tmp_path, third, recipes=(bumped,), toolchain=newer_go)
    assert third.calls == ["alpha"]


def test_a_missing_binary_or_broken_stamp_is_not_trusted(tmp_path: Path) -> None:
    _build(tmp_path, FakeBuilder())
    (tmp_path / "bin" / "alpha" / "b").unlink()
    (tmp_path / "bin" / "beta" / STAMP_FILE).write_text("{not json")
    again = FakeBuilder()
    built = _build(tmp_path, again)
    assert again.calls == ["alpha", "beta"]
    assert built.path("b").is_file()


def test_leftovers_of_an_interrupted_build_are_removed_and_never_trusted(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    leftover = bin_dir / ".alpha.k3x9"
    leftover.mkdir(parents=True)
    (leftover / "a").write_text("half")
    builder = FakeBuilder()
    built = _build(tmp_path, builder, recipes=(ALPHA,))
    assert builder.calls == ["alpha"]
    assert not leftover.exists()
    assert built.path("a").read_text().startswith("#!/bin/sh")


def test_leftovers_next_to_an_up_to_date_component_are_removed(tmp_path: Path) -> None:
    _build(tmp_path, FakeBuilder(), recipes=(ALPHA,))
    leftover = tmp_path / "bin" / ".alpha.old-x1"
    leftover.mkdir()
    unrelated = tmp_path / "bin" / ".alphabet.x1"
    unrelated.mkdir()
    builder = FakeBuilder()
    _build(tmp_path, builder, recipes=(ALPHA,))
    assert builder.calls == []
    assert not leftover.exists() and unrelated.exists()


def test_a_failed_build_keeps_the_previous_outputs_and_leaves_no_temporaries(tmp_path: Path) -> None:
    _build(tmp_path, FakeBuilder(), recipes=(ALPHA,))
    before = (tmp_path / "bin" / "alpha" / "a").read_text()
    with pytest.raises(BuildError, match="building alpha failed"):
        _build(tmp_path, FakeBuilder(fail=True), recipes=(ALPHA,), rebuild=True)
    assert (tmp_path / "bin" / "alpha" / "a").read_text() == before
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["alpha"]


def test_a_build_that_misses_a_binary_is_an_error_and_installs_nothing(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="produced no b"):
        _build(tmp_path, FakeBuilder(skip="b"), recipes=(ALPHA,))
    assert list((tmp_path / "bin").iterdir()) == []


def test_built_binaries_path_names_the_component_to_build() -> None:
    built = BuiltBinaries({"etcd": {"etcd": Path("/x/etcd/etcd")}})
    assert built.path("etcd") == Path("/x/etcd/etcd")
    with pytest.raises(MissingBinaryError, match="from component 'kubernetes'"):
        built.path("kubeadm")
    with pytest.raises(MissingBinaryError, match="no component builds a binary named 'weave'"):
        built.path("weave")


def test_built_binaries_cannot_be_changed() -> None:
    source = {"etcd": {"etcd": Path("/x/etcd/etcd")}}
    built = BuiltBinaries(source)
    source["etcd"]["etcdctl"] = Path("/elsewhere")
    with pytest.raises(TypeError):
        built.components["etcd"]["etcdctl"] = Path("/elsewhere")  # type: ignore[index]
    with pytest.raises(MissingBinaryError):
        built.path("etcdctl")


# ------------------------------------------------------------------------------------------------ errors and tools


def test_build_error_names_component_command_and_the_last_40_lines() -> None:
    output = "\n".join(f"line {i}" for i in range(100))
    err = BuildError("coredns", "go build exited 1: the output below says why", command=["go", "build", "a b"],
                     output=output)
    text = str(err)
    assert text.startswith("building coredns failed: go build exited 1")
    assert "command: go build 'a b'" in text
    assert "line 60\n" in text and "line 99" in text and "line 59\n" not in text
    assert err.output_tail.count("\n") == 39


def _fake_tool(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def _go_env_json(version: str) -> str:
    facts = {"GOVERSION": version, "GOOS": "linux", "GOARCH": "amd64", "GOAMD64": "v1"}
    return f"echo '{json.dumps(facts)}'"


def test_check_build_tools_names_every_missing_tool_with_its_fix(tmp_path: Path) -> None:
    problems = check_build_tools({"PATH": str(tmp_path)})
    text = "\n".join(problems)
    assert "go not found on PATH: install Go >= 1.24.3" in text
    assert "apt-get install gcc libc6-dev" in text
    assert "apt-get install libseccomp-dev pkg-config" in text


def test_check_build_tools_reports_an_old_go(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "go", _go_env_json("go1.22.4"))
    problems = check_build_tools({"PATH": str(tmp_path)})
    assert any("go1.22.4 is older than go1.24.3" in p for p in problems)


def test_check_build_tools_reports_missing_libseccomp(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "pkg-config", "exit 1")
    problems = check_build_tools({"PATH": str(tmp_path)})
    assert "pkg-config finds no libseccomp (runc is built with the seccomp tag): apt-get install libseccomp-dev " \
           "pkg-config" in problems


def test_check_build_tools_accepts_a_complete_host(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "go", _go_env_json("go1.26.8"))
    libc = tmp_path / "libc.a"
    libc.write_text("")
    _fake_tool(tmp_path, "gcc", f"echo {libc}")
    _fake_tool(tmp_path, "pkg-config", "exit 0")
    assert check_build_tools({"PATH": str(tmp_path)}) == []


def test_go_runs_with_an_explicit_environment_and_leaves_os_environ_alone() -> None:
    before = dict(os.environ)
    env = gobuild._base_env({"PATH": "/usr/bin", "GOFLAGS": "-race"})
    assert env == {"PATH": "/usr/bin", "GOFLAGS": "-mod=mod -buildvcs=false", "GOTOOLCHAIN": "local",
                   "GOWORK": "off", "GO111MODULE": "on"}
    assert dict(os.environ) == before
