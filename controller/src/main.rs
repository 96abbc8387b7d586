use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Arg, ArgAction, Command};
use sidekey_controller::offline;
use sidekey_controller::render::{RenderOptions, SidecarMode};
use sidekey_controller::runtime::{self, Settings, SidecarSetting};

/// mimalloc, as in sidekey-proxy: with the reflector caches churning on every watch event,
/// glibc malloc held a third more RSS for the same live heap in the scale run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_IMAGE: &str = concat!("ghcr.io/sidekey-dev/sidekey-proxy:v", env!("CARGO_PKG_VERSION"));

/// `-f`/`--filename`, repeatable, as kubectl spells it.
fn files_arg(help: &'static str) -> Arg {
    Arg::new("file")
        .short('f')
        .long("filename")
        .required(true)
        .action(ArgAction::Append)
        .value_parser(clap::value_parser!(PathBuf))
        .help(help)
}

fn cli() -> Command {
    let image = Arg::new("proxy-image")
        .long("proxy-image")
        .env("SIDEKEY_PROXY_IMAGE")
        .default_value(DEFAULT_IMAGE)
        .help("sidekey-proxy image injected when a policy names none");
    let mode = Arg::new("sidecar-mode")
        .long("sidecar-mode")
        .env("SIDEKEY_SIDECAR_MODE")
        .value_parser(sidecar_setting())
        .default_value("auto")
        .help("native: init container with restartPolicy Always (Kubernetes >= 1.29); regular: a plain container; auto: by server version");
    Command::new("sidekey-controller")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Puts sidekey-proxy in front of the workloads an AuthPolicy targets")
        .after_help(
            "With no subcommand, sidekey-controller runs the controller against a cluster, so it needs a kubeconfig: \
             $KUBECONFIG (else ~/.kube/config), or in a pod the in-cluster config of its service account. \
             render, validate and crd work without a cluster.",
        )
        .subcommand_required(false)
        .arg(image.clone())
        .arg(mode.clone())
        .arg(
            Arg::new("metrics-address")
                .long("metrics-address")
                .env("SIDEKEY_METRICS_ADDRESS")
                .default_value("0.0.0.0:8080")
                .help("Serves /metrics, /healthz and /readyz"),
        )
        .arg(
            Arg::new("leader-election")
                .long("leader-election")
                .env("SIDEKEY_LEADER_ELECTION")
                .value_parser(clap::value_parser!(bool))
                .default_value("true")
                .help("Run only while holding the sidekey-controller Lease (safe with several replicas)"),
        )
        .arg(
            Arg::new("lease-namespace")
                .long("lease-namespace")
                .env("POD_NAMESPACE")
                .default_value("sidekey-system")
                .help("Namespace of the leader-election Lease"),
        )
        .subcommand(
            Command::new("render")
                .about("Print the Deployments and Services the given AuthPolicies would patch, without a cluster")
                .long_about(
                    "Print the Deployments and Services the given AuthPolicies would patch, without a cluster.\n\n\
                     Refuses (exit 1, the reasons on stderr, nothing on stdout) when a policy fails `validate`, \
                     would not be Accepted (say, a conflict with an older policy), or names a target missing from the input.",
                )
                .arg(files_arg("YAML file or directory (AuthPolicy, HTTPRoute, ReferenceGrant, Service, Deployment); repeatable"))
                .arg(image)
                .arg(
                    Arg::new("sidecar-mode")
                        .long("sidecar-mode")
                        .value_parser(PossibleValuesParser::new(["native", "regular"]).map(|s| {
                            if s == "regular" { SidecarMode::Regular } else { SidecarMode::Native }
                        }))
                        .default_value("native"),
                ),
        )
        .subcommand(
            Command::new("validate")
                .about("Check AuthPolicies as the API server (schema, defaults, CEL rules) and then the controller would, without a cluster")
                .long_about(
                    "Check AuthPolicies as the API server (schema, defaults, CEL rules) and then the controller would, without a cluster.\n\n\
                     Prints `authpolicy/<namespace>/<name>: ok` for each good policy on stdout and one \
                     `authpolicy/<namespace>/<name>: <error>` line per problem on stderr, in the API server's words. \
                     Other kinds of document are ignored. Exits 1 when any policy has a problem.",
                )
                .arg(files_arg("YAML file or directory; repeatable")),
        )
        .subcommand(Command::new("crd").about("Print the AuthPolicy CustomResourceDefinition"))
}

/// `--sidecar-mode auto|native|regular`, typed.
fn sidecar_setting() -> impl clap::builder::TypedValueParser<Value = SidecarSetting> {
    PossibleValuesParser::new(SidecarSetting::VALUES).map(|s| SidecarSetting::parse(&s).expect("clap allowed only the listed values"))
}

fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()))
        .init();
}

fn main() -> ExitCode {
    let m = cli().get_matches();
    match m.subcommand() {
        Some(("crd", _)) => {
            print!("{}", sidekey_controller::crd_yaml());
            ExitCode::SUCCESS
        }
        Some(("render", r)) => {
            let paths: Vec<PathBuf> = r.get_many::<PathBuf>("file").into_iter().flatten().cloned().collect();
            let opts = RenderOptions {
                proxy_image: r.get_one::<String>("proxy-image").cloned().unwrap_or_default(),
                mode: r.get_one::<SidecarMode>("sidecar-mode").copied().unwrap_or(SidecarMode::Native),
                service_account_issuer: None,
            };
            let result = offline::Input::read(&paths).and_then(|input| {
                let rendered = offline::render(&input, &opts)?;
                Ok(offline::to_yaml(&rendered))
            });
            match result {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(offline::RenderError::Refused(lines)) => {
                    for l in lines {
                        eprintln!("{l}");
                    }
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(("validate", v)) => {
            let paths: Vec<PathBuf> = v.get_many::<PathBuf>("file").into_iter().flatten().cloned().collect();
            let docs = match offline::read_documents(&paths) {
                Ok(docs) => docs,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut failed = false;
            for doc in docs.iter().filter(|d| d.is_auth_policy()) {
                let check = offline::check_policy(doc);
                if check.errors.is_empty() {
                    println!("{}: ok", check.name());
                }
                for e in &check.errors {
                    eprintln!("{}: {e}", check.name());
                    failed = true;
                }
            }
            if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        _ => {
            init_logging();
            let settings = Settings {
                proxy_image: m.get_one::<String>("proxy-image").cloned().unwrap_or_default(),
                sidecar_mode: m.get_one::<SidecarSetting>("sidecar-mode").copied().unwrap_or(SidecarSetting::Auto),
                metrics_address: match m.get_one::<String>("metrics-address").map(|a| a.parse()) {
                    Some(Ok(a)) => a,
                    _ => {
                        eprintln!("error: --metrics-address must be host:port, e.g. 0.0.0.0:8080");
                        return ExitCode::from(2);
                    }
                },
                leader_election: m.get_one::<bool>("leader-election").copied().unwrap_or(true),
                lease_namespace: m.get_one::<String>("lease-namespace").cloned().unwrap_or_default(),
                identity: runtime::leader::Holder {
                    name: std::env::var("POD_NAME").unwrap_or_else(|_| format!("sidekey-controller-{}", std::process::id())),
                    // An owner in another namespace counts as absent to the garbage collector,
                    // which would delete a Lease in use: own it only in the Pod's namespace.
                    pod_uid: std::env::var("POD_UID").ok().filter(|_| {
                        std::env::var("POD_NAMESPACE").ok().as_deref() == m.get_one::<String>("lease-namespace").map(String::as_str)
                    }),
                },
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(runtime::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(runtime::RunError::LostLeadership) => {
                    tracing::error!("lost leadership; exiting so the new leader runs alone");
                    ExitCode::from(1)
                }
                Err(e) => {
                    tracing::error!(error = %e, "controller failed");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
