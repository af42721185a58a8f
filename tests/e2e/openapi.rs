//! The served OpenAPI document is valid for standard tooling and true to the API: a real
//! validator accepts it, and a client built from it (tests/openapi/exercise.py: methods, path
//! templates, where each parameter goes, request and response schemas) drives a live host.

use crate::harness::{Host, repo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_a_client_built_from_it_drives_the_host() {
    let python = repo().join("target/py/bin/python");
    assert!(
        python.is_file(),
        "{} is missing — `./dev test` installs tests/openapi/requirements.txt there",
        python.display()
    );
    let host = Host::start(&["echo", "greeter"]);
    let script = repo().join("tests/openapi/exercise.py");
    let url = host.url.clone();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(python).arg(script).arg(url).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exercise.py failed:\n{stdout}\n{stderr}\n{}", host.logs());
    assert!(stdout.contains("18/18 checks passed"), "{stdout}");
}
