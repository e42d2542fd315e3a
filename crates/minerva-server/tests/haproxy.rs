//! Two replicas behind a real HAProxy running the shipped configuration
//! (`deploy/haproxy/haproxy.cfg`): requests for a model land on the one replica that
//! holds it (consistent hashing on the request's model), and when that replica stops,
//! its model's requests fail over to the other without a failed request.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{CHAT, EMBED, TestServer, client};
use minerva_server::ServerConfig;
use serde_json::{Value, json};

/// HAProxy (Debian's package, installed by `scripts/install-services.sh`) on a free
/// port with the shipped configuration; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(replicas: [SocketAddr; 2]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/haproxy/haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .env("MINERVA_LB_BIND", addr.to_string())
            .env("MINERVA_REPLICA_1", replicas[0].to_string())
            .env("MINERVA_REPLICA_2", replicas[1].to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy runs (scripts/install-services.sh installs Debian's haproxy)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` to `path` through the balancer; the model it was routed by and the body.
async fn through(lb: &Haproxy, path: &str, body: &Value) -> (String, Value) {
    let response = client()
        .post(format!("http://{}{path}", lb.addr))
        .json(body)
        .send()
        .await
        .expect("the balancer answers");
    assert_eq!(response.status(), 200, "{path}");
    let routed = response
        .headers()
        .get("x-minerva-routed-model")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (routed, response.json().await.unwrap())
}

/// The models `server` has loaded.
async fn loaded(server: &TestServer) -> Vec<String> {
    let body = server.ok_get("/v1/models/loaded").await;
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_model_land_on_the_replica_that_holds_it_and_fail_over_when_it_stops() {
    let mut replicas = [
        TestServer::start(ServerConfig::default()).await,
        TestServer::start(ServerConfig::default()).await,
    ];
    let lb = Haproxy::start([replicas[0].addr, replicas[1].addr]);
    let tokenize = json!({ "model": CHAT, "prompt": "Hello there" });
    let embed = json!({ "model": EMBED, "input": "Hello there" });

    for _ in 0..4 {
        let (routed, body) = through(&lb, "/v1/tokenize", &tokenize).await;
        assert_eq!(routed, CHAT);
        assert!(!body["tokens"].as_array().unwrap().is_empty());
        let (routed, _) = through(&lb, "/v1/embeddings", &embed).await;
        assert_eq!(routed, EMBED);
    }
    // The model in the path routes the same way as the one in the body.
    let response = client()
        .get(format!("http://{}/v1/models/{CHAT}", lb.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-minerva-routed-model"], CHAT);

    // Each model was loaded by one replica only: every request for it went there.
    let held = [loaded(&replicas[0]).await, loaded(&replicas[1]).await];
    for model in [CHAT, EMBED] {
        let holders = held.iter().filter(|l| l.iter().any(|m| m == model)).count();
        assert_eq!(holders, 1, "{model} loaded on {holders} replicas: {held:?}");
    }
    let holder = usize::from(!held[0].iter().any(|m| m == CHAT));
    let other = 1 - holder;

    // The holder stops: the next requests for its model are served by the other replica,
    // none of them failing.
    replicas[holder].trigger_shutdown();
    for _ in 0..4 {
        let (routed, _) = through(&lb, "/v1/tokenize", &tokenize).await;
        assert_eq!(routed, CHAT);
    }
    assert!(
        loaded(&replicas[other]).await.iter().any(|m| m == CHAT),
        "the other replica took the model over"
    );
}
