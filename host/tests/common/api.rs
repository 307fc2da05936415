//! A node on a real PostgreSQL, and a client of its API as one caller.

use allot_host::api::TokenConfig;
use allot_host::node::{ClusterConfig, Config, EntityConfig, HttpLimits, Node};
use allot_host::sandbox::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const CHECKOUT: &str = "checkout-token-0001";
pub const PLANNER: &str = "planner-token-00001";
pub const OPERATOR: &str = "operator-token-0001";

/// Plugins every test node loads.
pub const PLUGINS: &[&str] = &[
    "allot-logistics",
    "allot-vehicle-load",
    "allot-plugin-template",
    "allot-test-unruly",
];

/// Starts a node on a fresh database, listening on a free loopback port.
pub async fn node_with(url: Option<String>, entities: EntityConfig) -> Node {
    node_in_cluster(url, entities, ClusterConfig::default()).await
}

/// Starts a node as [`node_with`] does, with these cluster settings (the
/// test cluster's secret added).
pub async fn node_in_cluster(
    url: Option<String>,
    entities: EntityConfig,
    cluster: ClusterConfig,
) -> Node {
    node_from(url, entities, cluster, HttpLimits::default()).await
}

/// Starts a node as [`node_in_cluster`] does, with these HTTP limits.
pub async fn node_from(
    url: Option<String>,
    entities: EntityConfig,
    cluster: ClusterConfig,
    http: HttpLimits,
) -> Node {
    let url = match url {
        Some(url) => url,
        None => super::database().await,
    };
    let tokens = [
        ("checkout-web", Role::Checkout, CHECKOUT),
        ("planning", Role::Planner, PLANNER),
        ("ops", Role::Operator, OPERATOR),
    ];
    Node::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(url),
        plugins: PLUGINS.iter().map(|p| super::component(p)).collect(),
        tokens: tokens
            .iter()
            .map(|(name, role, token)| TokenConfig {
                name: (*name).into(),
                role: *role,
                token: (*token).into(),
            })
            .collect(),
        entities,
        http,
        // Nodes a test starts on one database form a cluster.
        cluster: ClusterConfig {
            secret: Some("test-cluster-secret-0001".into()),
            ..cluster
        },
        ..Config::default()
    })
    .await
    .expect("node starts")
}

pub async fn node() -> Node {
    node_with(None, EntityConfig::default()).await
}

/// A client of one node, as one caller.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<&'static str>,
}

/// A response: status, headers and the body, as sent and as JSON (Null
/// when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// Asserts a problem response with this status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        assert_eq!(self.body["status"], status);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{}",
            self.body
        );
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        &self.body
    }
}

impl Api {
    pub fn new(node: &Node, token: Option<&'static str>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: node.url(),
            token,
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.raw(method, path, body.map(|b| b.to_string()), &[])
            .await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("the node answers")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn create(&self, id: &str, capacity_type: &str, config: Value) -> Reply {
        self.post(
            "/v1/pools",
            json!({ "id": id, "capacity_type": capacity_type, "config": config }),
        )
        .await
    }

    pub async fn reserve(&self, pool: &str, id: &str, request: Value) -> Reply {
        self.post(
            &format!("/v1/pools/{pool}/reservations"),
            json!({ "id": id, "request": request }),
        )
        .await
    }
}
