//! Why an injected sidecar is not running, read from the Pods of a Deployment whose rollout
//! is pending: a crash loop, a refused image, a bad container config. Pure; the reconciler
//! lists the Pods.

use crate::names::CONTAINER_NAME;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons that will not resolve by waiting.
const STUCK: &[&str] = &[
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "RunContainerError",
];

/// The longest message carried into a status condition: the proxy's error line, not a log.
const MAX_MESSAGE: usize = 1024;

/// For the first Pod whose sidecar is failing: `pod <ns>/<name>: sidekey-proxy <reason>: <its
/// last words>`, e.g. the proxy's "invalid configuration" line from the termination log.
pub fn sidecar_failure(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        let ours = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .find(|c| c.name == CONTAINER_NAME)?;
        let why = failure(ours)?;
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        Some(truncate(format!("pod {name}: {CONTAINER_NAME} {why}")))
    })
}

fn failure(c: &ContainerStatus) -> Option<String> {
    let state = c.state.as_ref()?;
    let last_words = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.message.as_deref())
        .map(first_line)
        .filter(|m| !m.is_empty());
    let restarts = match c.restart_count {
        0 => String::new(),
        1 => " (restarted once)".into(),
        n => format!(" (restarted {n} times)"),
    };
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or_default();
        if !STUCK.contains(&reason) {
            return None;
        }
        let detail = last_words.or_else(|| w.message.as_deref().map(first_line).filter(|m| !m.is_empty()));
        return Some(match detail {
            Some(d) => format!("{reason}{restarts}: {d}"),
            None => format!("{reason}{restarts}"),
        });
    }
    // Between the exit and the back-off: a non-zero exit is already a failure.
    let t = state.terminated.as_ref()?;
    if t.exit_code == 0 {
        return None;
    }
    let detail = t.message.as_deref().map(first_line).filter(|m| !m.is_empty());
    Some(match detail {
        Some(d) => format!("exited with code {}{restarts}: {d}", t.exit_code),
        None => format!("exited with code {}{restarts}", t.exit_code),
    })
}

/// The proxy writes one line; with `FallbackToLogsOnError` the kubelet may hand over log
/// lines instead, whose last non-empty one is the error.
fn first_line(m: &str) -> String {
    m.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 1;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "hello-7d9c", "namespace": "apps"},
            "status": statuses,
        }))
        .unwrap()
    }

    const BAD_CONFIG: &str = "sidekey-proxy: invalid configuration: option `cookie_secret`: must be 16, 24 or 32 bytes";

    #[test]
    fn a_crash_loop_carries_the_proxys_own_line() {
        let p = pod(json!({"initContainerStatuses": [
            {"name": "other", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            {"name": "sidekey-proxy", "ready": false, "restartCount": 3, "image": "", "imageID": "",
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
             "lastState": {"terminated": {"exitCode": 2, "message": BAD_CONFIG}}},
        ]}));
        assert_eq!(
            sidecar_failure(&[p]).unwrap(),
            format!("pod apps/hello-7d9c: sidekey-proxy CrashLoopBackOff (restarted 3 times): {BAD_CONFIG}")
        );
    }

    #[test]
    fn the_first_failure_right_after_the_exit_counts_too() {
        let p = pod(json!({"initContainerStatuses": [
            {"name": "sidekey-proxy", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 2, "message": BAD_CONFIG}}},
        ]}));
        assert!(
            sidecar_failure(&[p])
                .unwrap()
                .ends_with(&format!("exited with code 2: {BAD_CONFIG}"))
        );
    }

    #[test]
    fn image_and_config_errors_use_the_kubelets_message() {
        let p = pod(json!({"containerStatuses": [
            {"name": "sidekey-proxy", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied\n"}}},
        ]}));
        assert!(
            sidecar_failure(&[p])
                .unwrap()
                .ends_with("sidekey-proxy ErrImagePull: pull access denied")
        );
    }

    #[test]
    fn starting_running_and_other_containers_are_not_failures() {
        let starting = pod(json!({"initContainerStatuses": [
            {"name": "sidekey-proxy", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]}));
        let running = pod(json!({"initContainerStatuses": [
            {"name": "sidekey-proxy", "ready": true, "restartCount": 1, "image": "", "imageID": "",
             "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 2, "message": BAD_CONFIG}}},
        ]}));
        let app_crashing = pod(json!({"containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 5, "image": "", "imageID": "",
             "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ]}));
        let no_status = pod(json!(null));
        assert_eq!(sidecar_failure(&[starting, running, app_crashing, no_status]), None);
    }

    #[test]
    fn log_fallback_keeps_the_last_line_and_long_lines_are_cut() {
        let logs = format!("{{\"level\":\"INFO\"}}\n{BAD_CONFIG}\n\n");
        assert_eq!(first_line(&logs), BAD_CONFIG);
        let long = truncate("é".repeat(2000));
        assert!(long.len() <= MAX_MESSAGE + '…'.len_utf8() && long.ends_with('…'));
    }
}
