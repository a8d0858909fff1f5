//! A small HTTP client for a site's docs/api.md surface. Every call returns the status and the
//! parsed JSON body (or `null`), so tests assert on both.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Bearer token sent with every call, if any.
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            // The site closes a keep-alive connection that sends no request for its header
            // timeout (10 s); a pooled connection reused at that moment is reset under the
            // request. Keep idle connections for less than that.
            client: reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("a reqwest client with default TLS settings"),
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// Signs in and returns a client carrying the token.
    pub async fn login(base: &str, username: &str, password: &str) -> anyhow::Result<Self> {
        let mut api = Self::new(base);
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/login",
                Some(serde_json::json!({"username": username, "password": password})),
            )
            .await?;
        anyhow::ensure!(status == StatusCode::OK, "login failed: {status} {body}");
        api.token = Some(
            body["token"]
                .as_str()
                .context("login answer has no token")?
                .to_owned(),
        );
        Ok(api)
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// Sends a JSON body (or none) and returns status and JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let retry = (method == Method::GET).then(|| req.try_clone()).flatten();
        let resp = match (req.send().await, retry) {
            // A GET changes nothing, so one that met a connection the server was closing is
            // sent again, on a new connection.
            (Err(e), Some(again)) if e.is_request() || e.is_connect() => again.send().await,
            (result, _) => result,
        }
        .with_context(|| format!("{method} {path}"))?;
        Self::answer(resp).await
    }

    /// Sends raw bytes as the body (for malformed and oversized bodies).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("content-type", "application/json")
            // A raw body may be refused before it is read (over the size limit); the server
            // then closes the connection, which must not be reused for the next call.
            .header("connection", "close")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> anyhow::Result<(StatusCode, Value)> {
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::DELETE, path, None).await
    }

    /// GET that must answer 200; returns the body.
    pub async fn get_ok(&self, path: &str) -> anyhow::Result<Value> {
        let (s, b) = self.get(path).await?;
        anyhow::ensure!(s == StatusCode::OK, "GET {path}: {s} {b}");
        Ok(b)
    }

    /// POST that must answer 200 or 201; returns the body.
    pub async fn post_ok(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (s, b) = self.post(path, body).await?;
        anyhow::ensure!(s.is_success(), "POST {path}: {s} {b}");
        Ok(b)
    }

    /// PATCH that must answer 200; returns the body.
    pub async fn patch_ok(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (s, b) = self.patch(path, body).await?;
        anyhow::ensure!(s == StatusCode::OK, "PATCH {path}: {s} {b}");
        Ok(b)
    }
}
