//! Shipping: the Dockerfile, docker-compose.yml, the scripts and the Kubernetes manifests, checked by
//! the linters and schema validators (each also shown a broken input, so it is seen to fail), and
//! the container health check run for real. There is no Docker engine here: CI runs the
//! Dockerfile's build command instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

fn run(tool_path: &Path, args: &[&str]) -> Output {
    Command::new(tool_path).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A YAML file as JSON, read by PyYAML from the tools' Python (kubernetes-validate brings it).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = tool("python3");
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let output = Command::new(python).args(["-c", script]).arg(path).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
#[ignore = "needs hadolint"]
fn the_dockerfile_is_lint_clean_multi_stage_non_root_with_a_grpc_health_check() {
    let hadolint = tool("hadolint");
    let lint = run(&hadolint, &["Dockerfile"]);
    assert!(lint.status.success(), "{}", text(&lint));
    let broken = temp_dir("hadolint").join("Dockerfile");
    std::fs::write(&broken, "FROM debian:latest\nRUN cd /tmp && apt-get install curl\n").unwrap();
    assert!(!run(&hadolint, &[broken.to_str().unwrap()]).status.success(), "hadolint fails a bad Dockerfile");

    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile.lines().filter(|line| line.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a slim runtime stage: {stages:?}");
    assert!(stages[1].contains("slim"), "{}", stages[1]);
    for needed in ["cmake", "g++", "USER 10001", "EXPOSE 50051", "CMD [\"tyk-grpc-plugin\", \"--health-check\"]"] {
        assert!(dockerfile.contains(needed), "the Dockerfile has {needed}");
    }
    // The dependency layer (with gRPC's C core) is built before the sources are copied in.
    let dependencies_built = dockerfile.find("cargo build --release --locked").unwrap();
    assert!(dependencies_built < dockerfile.find("COPY src src").unwrap());
    assert!(read(".dockerignore").lines().next().is_some_and(|first| first.starts_with('#')));
    assert!(!read(".dockerignore").contains("!target"), "target/ stays out of the build context");
}

#[test]
fn ci_runs_the_dockerfiles_build_command() {
    let command = "cargo build --release --locked";
    let build_lines = read("Dockerfile").lines().filter(|line| line.contains("cargo build")).count();
    assert_eq!(read("Dockerfile").matches(command).count(), build_lines, "every Dockerfile build is {command}");
    assert!(read(".ci/run").lines().any(|line| line.trim() == command), ".ci/run runs {command}");
}

#[test]
fn the_reading_path_is_src_main_rs_and_everything_else_uses_the_library() {
    // src/main.rs is the hooks and `main`, short enough to read in one go.
    let main = read("src/main.rs");
    let code = main.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("//")).count();
    assert!(code <= 200, "src/main.rs has {code} lines of code");
    assert!(main.contains("tyk_grpc_plugin::run(dispatch, dispatch_event)"), "main hands its hooks to the server");
    // Tests, benches, examples and fuzz targets reach the code through the crate, not by including
    // its files.
    let include = concat!("#[", "path");
    for dir in ["src", "tests", "tests/common", "benches", "examples", "fuzz/fuzz_targets"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|extension| extension == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                assert!(!source.contains(include), "{} includes a file by path", path.display());
            }
        }
    }
    assert!(!read("build.rs").contains("../proto"), "build.rs serves this crate alone");
    assert!(!read("Dockerfile").contains("COPY benches"), "the image builds the library and the binary alone");
}

/// The settings table, as (name, default, meaning).
fn settings_table() -> Vec<(String, String, String)> {
    let table = tyk_grpc_plugin::settings::SETTINGS.iter();
    table.map(|s| (s.name.to_owned(), s.default.to_owned(), s.meaning.to_owned())).collect()
}

#[test]
fn the_images_environment_holds_every_setting_with_its_default() {
    let dockerfile = read("Dockerfile");
    let env_block = dockerfile.split("\nENV ").nth(1).unwrap();
    let in_image: Vec<(String, String)> = env_block
        .lines()
        .map_while(|line| line.trim().trim_end_matches('\\').trim().split_once('='))
        .map(|(name, value)| (name.to_owned(), value.trim_matches('"').to_owned()))
        .collect();
    let table: Vec<(String, String)> = settings_table().into_iter().map(|(name, default, _)| (name, default)).collect();
    assert_eq!(in_image, table);
}

#[test]
fn the_readmes_settings_table_is_the_servers() {
    let readme = read("README.md");
    let section = readme.split("\n## Settings\n").nth(1).unwrap().split("\n## ").next().unwrap();
    let rows: Vec<(String, String, String)> = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let default = if cells[1] == "unset" { "" } else { cells[1].trim_matches('`') };
            (cells[0].trim_matches('`').to_owned(), default.to_owned(), cells[2].to_owned())
        })
        .collect();
    assert_eq!(rows, settings_table());
}

#[test]
#[ignore = "needs check-jsonschema"]
fn docker_compose_runs_it_under_the_demos_service_name() {
    let check_jsonschema = tool("check-jsonschema");
    let valid = run(&check_jsonschema, &["--builtin-schema", "vendor.compose-spec", "docker-compose.yml"]);
    assert!(valid.status.success(), "{}", text(&valid));
    let broken = temp_dir("compose").join("docker-compose.yml");
    std::fs::write(&broken, "services:\n  plugin:\n    ports: 50051\n    stop_grace_period: [15]\n").unwrap();
    let invalid = run(&check_jsonschema, &["--builtin-schema", "vendor.compose-spec", broken.to_str().unwrap()]);
    assert!(!invalid.status.success(), "the schema check fails a broken file");

    let compose = &yaml_documents(&repo("docker-compose.yml"))[0];
    let service = &compose["services"]["tyk-python-grpc-server"];
    assert_eq!(service["build"], ".");
    assert_eq!(service["ports"], serde_json::json!(["127.0.0.1:50051:50051"]), "published on loopback only");
    let stop: f64 = service["stop_grace_period"].as_str().unwrap().trim_end_matches('s').parse().unwrap();
    let setting = |name: &str| -> f64 { service["environment"][name].as_str().unwrap().parse().unwrap() };
    let drain = 1.1 * setting("TYK_PLUGIN_MAX_CONNECTION_AGE") + 1.0 + setting("TYK_PLUGIN_SHUTDOWN_GRACE");
    assert!(stop > drain, "Docker waits longer than the drain ({drain} s)");
    let gateway = &compose["x-tyk-gateway-environment"];
    assert_eq!(gateway["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"], "tcp://tyk-python-grpc-server:50051");
}

#[test]
#[ignore = "needs shellcheck"]
fn the_scripts_are_shellcheck_clean() {
    let shellcheck = tool("shellcheck");
    let checked = run(&shellcheck, &["hmac.sh", "up.sh", "down.sh", ".ci/run", "benches/h2load.sh"]);
    assert!(checked.status.success(), "{}", text(&checked));
    let broken = temp_dir("shellcheck").join("broken.sh");
    std::fs::write(&broken, "#!/bin/bash\nrm -rf $1/*\n").unwrap();
    assert!(!run(&shellcheck, &[broken.to_str().unwrap()]).status.success());
    for script in ["up.sh", "down.sh"] {
        assert!(read(script).contains("docker compose"), "{script} uses docker compose");
    }
}

#[test]
#[ignore = "needs kubernetes-validate and PyYAML"]
fn the_kubernetes_manifests_validate_and_fit_together() {
    let validate = tool("kubernetes-validate");
    let manifests: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    assert_eq!(manifests.len(), 4, "{manifests:?}");
    let mut args = vec!["--strict".to_owned()];
    args.extend(manifests.iter().map(|path| path.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let checked = run(&validate, &args);
    assert!(checked.status.success(), "{}", text(&checked));
    let broken = temp_dir("kubernetes").join("broken.yaml");
    std::fs::write(&broken, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: three}\n")
        .unwrap();
    assert!(!run(&validate, &["--strict", broken.to_str().unwrap()]).status.success());

    let documents: Vec<Value> = manifests.iter().flat_map(|path| yaml_documents(path)).collect();
    let of_kind = |kind: &str| documents.iter().find(|doc| doc["kind"] == kind).unwrap_or_else(|| panic!("a {kind}"));
    let deployment = of_kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 3);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], 50051, "{probe} asks the gRPC health service");
    }
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_owned())
    };
    let seconds = |name: &str| -> f64 { env(name).unwrap().parse().unwrap() };
    let drain = 1.1 * seconds("TYK_PLUGIN_MAX_CONNECTION_AGE") + 1.0 + seconds("TYK_PLUGIN_SHUTDOWN_GRACE");
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_f64().unwrap();
    assert!(
        pod["terminationGracePeriodSeconds"].as_f64().unwrap() > pre_stop + drain,
        "the drain ({drain} s) ends first"
    );
    assert!(container["resources"]["requests"]["memory"].is_string());
    // The memory budget, and the margin the memory test allows above it, fit in the limit.
    let mebibytes =
        |quantity: &Value| -> u64 { quantity.as_str().unwrap().strip_suffix("Mi").unwrap().parse().unwrap() };
    let budget: u64 = env("TYK_PLUGIN_MEMORY_LIMIT").unwrap().parse().unwrap();
    let default = tyk_grpc_plugin::settings::SETTINGS.iter().find(|s| s.name == "TYK_PLUGIN_MEMORY_LIMIT").unwrap();
    assert_eq!(budget.to_string(), default.default, "the manifest keeps the default budget");
    assert!((budget >> 20) + 96 < mebibytes(&container["resources"]["limits"]["memory"]), "the budget fits the limit");

    let secret = of_kind("Secret");
    let keys_file = env("TYK_PLUGIN_HMAC_KEYS_FILE").unwrap();
    let mount = &container["volumeMounts"][0];
    assert_eq!(Path::new(&keys_file).parent().unwrap(), Path::new(mount["mountPath"].as_str().unwrap()));
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], secret["metadata"]["name"]);
    let keys_json =
        secret["stringData"][Path::new(&keys_file).file_name().unwrap().to_str().unwrap()].as_str().unwrap();
    let keys_path = temp_dir("kubernetes-keys").join("keys.json");
    std::fs::write(&keys_path, keys_json).unwrap();
    let mode = pod["volumes"][0]["secret"]["defaultMode"].as_u64().unwrap();
    assert_eq!(mode & 0o007, 0, "the keys file is not readable by every user");
    assert_eq!(pod["securityContext"]["fsGroup"], pod["securityContext"]["runAsUser"], "but by the plugin's group");
    // The manifest's settings are the production ones the README recommends, and the server takes them.
    let required = env("TYK_PLUGIN_HMAC_REQUIRED_HEADERS").unwrap();
    assert!(required.contains("(request-target)") && required.contains("date"), "{required}");
    let algorithms = env("TYK_PLUGIN_HMAC_ALGORITHMS").unwrap();
    assert!(!algorithms.contains("sha1"), "{algorithms}");
    let names: Vec<String> =
        container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect();
    let mut settings: Vec<(String, String)> = names.iter().map(|name| (name.clone(), env(name).unwrap())).collect();
    // Here, the keys file written above, and a free port for the metrics.
    settings.retain(|(name, _)| name != "TYK_PLUGIN_HMAC_KEYS_FILE" && name != "TYK_PLUGIN_METRICS_LISTEN");
    settings.push(("TYK_PLUGIN_HMAC_KEYS_FILE".into(), keys_path.to_str().unwrap().into()));
    settings.push(("TYK_PLUGIN_METRICS_LISTEN".into(), format!("127.0.0.1:{}", free_port())));
    let settings: Vec<(&str, &str)> = settings.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    Plugin::start(&settings).wait_for_line("2 HMAC key(s)", Duration::from_secs(5));

    // Metrics on, on the named port the scrape annotations give.
    let metrics = env("TYK_PLUGIN_METRICS_LISTEN").unwrap();
    let port = container["ports"].as_array().unwrap().iter().find(|port| port["name"] == "metrics").unwrap();
    assert!(metrics.ends_with(&format!(":{}", port["containerPort"])), "{metrics}");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port["containerPort"].to_string());

    let service = of_kind("Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless, for dns:/// round robin");
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
    let gateway = &of_kind("ConfigMap")["data"];
    let target = gateway["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"].as_str().unwrap();
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert!(target.starts_with(&format!("dns:///{service_name}.")) && target.ends_with(":50051"), "{target}");
    assert_eq!(gateway["TYK_GW_COPROCESSOPTIONS_GRPCROUNDROBINLOADBALANCING"], "true");
}

#[test]
fn the_health_check_mode_exits_0_only_for_a_serving_server() {
    let health_check = |listen: &str| {
        Command::new(BINARY).arg("--health-check").env_clear().env("TYK_PLUGIN_LISTEN", listen).output().unwrap()
    };
    let socket = temp_dir("health-check").join("plugin.sock").display().to_string();
    let listen = format!("127.0.0.1:0,unix:{socket}");
    let mut plugin = Plugin::start(&[("TYK_PLUGIN_LISTEN", &listen), ("TYK_PLUGIN_MAX_CONNECTION_AGE", "10")]);
    // A connection that stays open keeps the drain going until it ages out.
    let client = plugin.client();
    client.unary_call(&proto::HEALTH_CHECK, &Default::default(), call_options()).unwrap();
    let port = plugin.address.rsplit_once(':').unwrap().1.to_owned();
    for listen in [plugin.address.clone(), format!("[::]:{port}"), format!("0.0.0.0:{port}"), format!("unix:{socket}")]
    {
        let checked = health_check(&listen);
        assert!(checked.status.success(), "{listen}: {}", text(&checked));
    }
    plugin.signal(libc::SIGTERM);
    plugin.wait_for_line("draining", Duration::from_secs(5));
    // Draining: new connections are refused, and the open one hears NOT_SERVING.
    let draining = health_check(&plugin.address);
    assert_eq!(draining.status.code(), Some(1), "not serving while draining: {}", text(&draining));
    let health = client.unary_call(&proto::HEALTH_CHECK, &Default::default(), call_options()).unwrap();
    assert_eq!(health.status, proto::ServingStatus::NOT_SERVING.into());
    let nothing = health_check(&format!("127.0.0.1:{}", free_port()));
    assert_eq!(nothing.status.code(), Some(1));
}
