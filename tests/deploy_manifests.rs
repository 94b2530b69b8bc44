//! The deployment files against the binary they deploy: every `spansink`
//! invocation in the Dockerfile, the compose file and the Kubernetes
//! manifests names subcommands and flags that exist, every `SPANSINK_*`
//! variable they set is read by some flag, the grace periods cover the drain
//! the flags configure, the kustomization lists every manifest, and the
//! PrometheusRule holds exactly the alert rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory as _;
use spansink::cmd::Cli;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    let full = Path::new(ROOT).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The Kubernetes manifests, relative to the repository.
fn k8s_files() -> Vec<String> {
    let dir = Path::new(ROOT).join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("deploy/k8s/{n}"))
        .collect();
    files.sort();
    files
}

/// Every file that starts `spansink`.
fn deployment_files() -> Vec<String> {
    let mut files = vec!["Dockerfile".to_string(), "deploy/compose.yaml".to_string()];
    files.extend(k8s_files());
    files
}

/// The command line as clap sees it, with global flags copied into every
/// subcommand.
fn cli() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli
}

/// Every `[ "a", "b", ... ]` list of double-quoted strings in `text`: JSON
/// arrays in the Dockerfile, flow sequences in YAML, over several lines or one.
fn string_lists(text: &str) -> Vec<Vec<String>> {
    let mut lists = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '[' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut items = Vec::new();
        let complete = loop {
            while j < chars.len() && (chars[j].is_whitespace() || chars[j] == ',') {
                j += 1;
            }
            match chars.get(j) {
                Some(']') => break true,
                Some('"') => {
                    let mut item = String::new();
                    j += 1;
                    while j < chars.len() && chars[j] != '"' {
                        if chars[j] == '\\' {
                            j += 1;
                        }
                        if let Some(c) = chars.get(j) {
                            item.push(*c);
                        }
                        j += 1;
                    }
                    j += 1;
                    items.push(item);
                }
                _ => break false,
            }
        };
        if complete && !items.is_empty() {
            lists.push(items);
        }
        i += 1;
    }
    lists
}

/// The arguments after the binary, if `list` runs spansink: either the binary
/// itself comes first (after `CMD` in a compose health check), or the list
/// starts with a subcommand, as a Dockerfile's CMD or a container's args do.
fn invocation(list: &[String], cli: &clap::Command) -> Option<Vec<String>> {
    if let Some(at) = list
        .iter()
        .position(|s| s == "spansink" || s.ends_with("/spansink"))
    {
        return Some(list[at + 1..].to_vec());
    }
    let first = list.first()?;
    cli.find_subcommand(first).map(|_| list.to_vec())
}

/// Checks `args` against the command line; returns what is wrong, and the
/// subcommand path it ran.
fn check_args(cli: &clap::Command, args: &[String]) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut path = Vec::new();
    let mut command = cli;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if let Some(flag) = arg.strip_prefix("--") {
            let (name, inline_value) = match flag.split_once('=') {
                Some((n, _)) => (n, true),
                None => (flag, false),
            };
            match command.get_arguments().find(|a| a.get_long() == Some(name)) {
                Some(a) => {
                    let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
                    if takes_value && !inline_value {
                        rest.next();
                    }
                }
                None => errors.push(format!(
                    "`spansink {}` has no flag --{name}",
                    path.join(" ")
                )),
            }
        } else {
            match command.find_subcommand(arg) {
                Some(sub) => {
                    path.push(arg.clone());
                    command = sub;
                }
                None => errors.push(format!(
                    "`spansink {}` has no subcommand or argument {arg:?}",
                    path.join(" ")
                )),
            }
        }
    }
    if path.is_empty() {
        errors.push("no subcommand".to_string());
    }
    (errors, path)
}

#[test]
fn the_flags_and_subcommands_deployed_exist() {
    let cli = cli();
    let mut errors = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for file in deployment_files() {
        for list in string_lists(&read(&file)) {
            // The binary alone is an ENTRYPOINT, whose CMD names the subcommand.
            let Some(args) = invocation(&list, &cli).filter(|a| !a.is_empty()) else {
                continue;
            };
            let (wrong, path) = check_args(&cli, &args);
            errors.extend(wrong.into_iter().map(|e| format!("{file}: {list:?}: {e}")));
            seen.insert((file.clone(), path.join(" ")));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // Each file is read for what it is known to start: a parser that found
    // nothing would pass everything.
    for expected in [
        ("Dockerfile", "run"),
        ("Dockerfile", "healthcheck"),
        ("deploy/compose.yaml", "run"),
        ("deploy/compose.yaml", "loadgen"),
        ("deploy/k8s/statefulset.yaml", "run"),
        ("deploy/k8s/spool-drain-job.yaml", "spool drain"),
    ] {
        assert!(
            seen.contains(&(expected.0.to_string(), expected.1.to_string())),
            "no `spansink {}` found in {}; found {seen:?}",
            expected.1,
            expected.0
        );
    }
}

#[test]
fn the_checker_refuses_what_does_not_exist() {
    let cli = cli();
    let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let (ok, _) = check_args(&cli, &args(&["run", "--drain-timeout=5s", "--no-migrate"]));
    assert!(ok.is_empty(), "{ok:?}");
    let (wrong, _) = check_args(&cli, &args(&["run", "--drain-timeuot=5s"]));
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    let (wrong, _) = check_args(&cli, &args(&["rnu"]));
    assert!(wrong.iter().any(|e| e.contains("\"rnu\"")), "{wrong:?}");
    // A global flag of `spool` is accepted after its subcommand.
    let (ok, path) = check_args(&cli, &args(&["spool", "drain", "--spool-dir", "/s"]));
    assert!(ok.is_empty(), "{ok:?}");
    assert_eq!(path, ["spool", "drain"]);
    let lists = string_lists("CMD [\"/usr/local/bin/spansink\", \"healthcheck\"]\nx: [a, b]\n");
    assert_eq!(lists, [args(&["/usr/local/bin/spansink", "healthcheck"])]);
}

/// Every environment variable some flag of some subcommand reads.
fn environment_names(command: &clap::Command, names: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            names.insert(env.to_string_lossy().to_string());
        }
    }
    for sub in command.get_subcommands() {
        environment_names(sub, names);
    }
}

#[test]
fn every_variable_deployed_is_read_by_a_flag() {
    let mut known = BTreeSet::new();
    environment_names(&cli(), &mut known);
    // A build argument of the Dockerfile, read by build.rs, not at run time.
    known.insert("SPANSINK_GIT_SHA".to_string());
    // Named in the PrometheusRule's header: how this test regenerates it.
    known.insert("SPANSINK_BLESS".to_string());
    let mut unknown = Vec::new();
    let mut found = 0;
    for file in deployment_files() {
        let text = read(&file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("SPANSINK_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            found += 1;
            if !known.contains(&name) {
                unknown.push(format!("{file}: {name}"));
            }
            rest = &rest[at + name.len()..];
        }
    }
    assert!(unknown.is_empty(), "no flag reads {unknown:?}");
    assert!(found > 10, "only {found} variables found");
}

/// `--name=VALUE` among `args`, else the flag's default.
fn duration_flag(cli: &clap::Command, args: &[String], name: &str) -> Duration {
    let prefix = format!("--{name}=");
    let value = args
        .iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| {
            let run = cli.find_subcommand("run").expect("run");
            let arg = run
                .get_arguments()
                .find(|a| a.get_long() == Some(name))
                .unwrap_or_else(|| panic!("--{name}"));
            arg.get_default_values()[0].to_string_lossy().to_string()
        });
    humantime::parse_duration(&value).unwrap_or_else(|e| panic!("--{name}={value}: {e}"))
}

/// The `run` invocation in `file` (there must be one).
fn run_args(cli: &clap::Command, file: &str) -> Vec<String> {
    string_lists(&read(file))
        .into_iter()
        .filter_map(|l| invocation(&l, cli))
        .find(|a| a.first().map(String::as_str) == Some("run"))
        .unwrap_or_else(|| panic!("{file}: no `spansink run`"))
}

/// The value after `key:` on the first line that has it.
fn yaml_scalar(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect()
}

/// What a stop needs: the batches' drain, the spool's last pass, and time to
/// leave the group and exit.
fn needed(cli: &clap::Command, args: &[String]) -> Duration {
    duration_flag(cli, args, "drain-timeout")
        + duration_flag(cli, args, "spool-drain-timeout")
        + Duration::from_secs(10)
}

#[test]
fn grace_periods_cover_the_drain_and_the_spool_pass() {
    let cli = cli();
    let compose = "deploy/compose.yaml";
    let need = needed(&cli, &run_args(&cli, compose));
    let graces = yaml_scalar(&read(compose), "stop_grace_period");
    assert!(!graces.is_empty(), "{compose}: no stop_grace_period");
    for grace in graces {
        let grace = humantime::parse_duration(&grace).expect("stop_grace_period");
        assert!(
            grace >= need,
            "{compose}: stop_grace_period {grace:?} < {need:?}"
        );
    }

    let sts = "deploy/k8s/statefulset.yaml";
    let need = needed(&cli, &run_args(&cli, sts));
    let graces = yaml_scalar(&read(sts), "terminationGracePeriodSeconds");
    assert_eq!(graces.len(), 1, "{sts}: terminationGracePeriodSeconds");
    let grace = Duration::from_secs(graces[0].parse().expect("seconds"));
    assert!(
        grace >= need,
        "{sts}: terminationGracePeriodSeconds {grace:?} < {need:?}"
    );
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization = read("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .take_while(|l| l.starts_with("  -"))
        .map(|l| format!("deploy/k8s/{}", l.trim_start_matches("  -").trim()))
        .collect();
    // Not applied with the rest: a template for one recovery.
    let templates = [
        "deploy/k8s/spool-drain-job.yaml",
        "deploy/k8s/kustomization.yaml",
    ];
    let files: BTreeSet<String> = k8s_files()
        .into_iter()
        .filter(|f| !templates.contains(&f.as_str()))
        .collect();
    assert_eq!(listed, files);
}

/// The alert rules wrapped in a PrometheusRule: the groups, indented under `spec:`.
fn prometheus_rule(alerts: &str) -> String {
    let groups = alerts
        .find("\ngroups:")
        .map(|at| &alerts[at + 1..])
        .expect("alerts.yaml has groups");
    let mut out = String::from(
        "# Generated from deploy/prometheus/alerts.yaml: the same groups, wrapped for
# the Prometheus Operator. Do not edit by hand; after changing the rules, run
# `SPANSINK_BLESS=1 cargo test --test deploy_manifests` to regenerate it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: spansink
  labels:
    app.kubernetes.io/name: spansink
spec:
",
    );
    for line in groups.split_inclusive('\n') {
        if !line.trim().is_empty() {
            out.push_str("  ");
        }
        out.push_str(line);
    }
    out
}

#[test]
fn the_prometheus_rule_is_the_alert_rules() {
    let expected = prometheus_rule(&read("deploy/prometheus/alerts.yaml"));
    let path: PathBuf = Path::new(ROOT).join("deploy/k8s/prometheusrule.yaml");
    if std::env::var_os("SPANSINK_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write the PrometheusRule");
    }
    let actual = read("deploy/k8s/prometheusrule.yaml");
    assert!(
        actual == expected,
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yaml; regenerate it with SPANSINK_BLESS=1 cargo test --test deploy_manifests"
    );
    assert!(expected.matches("- alert:").count() >= 10);
}
