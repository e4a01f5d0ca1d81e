//! The chat page at `/`: plain HTML and JavaScript compiled into the binary (no build step). Pick one or
//! several models, send a prompt, and read their answers side by side as they stream — how a clinician
//! compares the base, medical and ultrasound models.

use axum::response::Html;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
