//! Everything this site does with other sites over the hub link: serving the built-in
//! services other sites address (pairing now; device lookup and sync later), and background
//! duties such as closing expired pairing windows.
//!
//! One task reads the link's inbound receiver and hands each message to its service by the
//! connector name it is addressed to; every service runs in its own task so that a slow one
//! never holds up the others.

pub mod pairing;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::link::Inbound;
use crate::state::AppState;

/// Starts the services; they stop when `cancel` is cancelled.
pub fn spawn(
    state: AppState,
    inbound: Option<mpsc::Receiver<Inbound>>,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    if let Some(mut inbound) = inbound {
        let (state, cancel) = (state.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut handlers = JoinSet::new();
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    msg = inbound.recv() => match msg {
                        None => break,
                        Some(msg) => {
                            let state = state.clone();
                            handlers.spawn(dispatch(state, msg));
                        }
                    },
                    Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
                }
            }
            handlers.shutdown().await;
        });
    }
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = pairing::expire(&state).await {
                        tracing::warn!(error = %e, "could not expire pairing windows");
                    }
                }
            }
        }
    });
}

async fn dispatch(state: AppState, msg: Inbound) {
    match msg.connector.as_str() {
        pairing::PAIRING_SERVICE => pairing::on_message(&state, msg).await,
        other => {
            tracing::debug!(service = other, from = %msg.from, "message for an unknown service");
            if let Some(reply) = msg.reply {
                let _ = reply
                    .fail(&format!("this site has no service {other:?}"))
                    .await;
            }
        }
    }
}
