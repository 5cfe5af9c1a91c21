//! The handler's error, as an HTTP answer.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

#[derive(Debug)]
pub enum AppError {
    /// The inference did not finish within the request's deadline.
    Timeout,
    /// Every permit of the model is taken.
    Overloaded,
    /// The model failed, or its task did.
    Failed(String),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timed out".to_string()),
            AppError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded".to_string()),
            AppError::Failed(why) => (StatusCode::INTERNAL_SERVER_ERROR, why),
        };
        (status, message).into_response()
    }
}
