//! The site's REST API of API.md against a real `west site` process.

use serde_json::json;

use crate::util;

#[tokio::test]
async fn health_answers_without_a_token() -> anyhow::Result<()> {
    let site = util::site("site-a").await?;
    let health = testkit::Api::new(&site.url).get_ok("/health").await?;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["site"], "site-a");
    assert_eq!(health["hub"]["connected"], false);
    let (status, body) = testkit::Api::new(&site.url)
        .get("/api/v1/connectors")
        .await?;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let _ = json!({});
    Ok(())
}
