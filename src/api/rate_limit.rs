//! The per-address rate limits, checked from the request head before the body is read (so
//! a flood of large bodies from one address costs no reading): which endpoints have one,
//! keyed on the client address the request context holds (after `trusted_proxies`).

use std::any::TypeId;

use ruma::api::client::{
    account::{check_registration_token_validity, register},
    delayed_events::update_delayed_event,
    session::login,
};

use crate::{
    Result,
    service::{Services, rate_limits::Limiter},
};

/// How an endpoint meets its per-address limit.
enum Use {
    /// Each request counts.
    Count,
    /// Requests are refused once the address is over the limit; what counts is decided
    /// later (`/register` counts accounts made, not the requests of their sessions).
    Refuse,
}

/// The per-address limit of endpoint request type `T`, if it has one.
fn address_limit<T: 'static>() -> Option<(Limiter, Use)> {
    let endpoint = TypeId::of::<T>();
    if endpoint == TypeId::of::<login::v3::Request>() {
        Some((Limiter::LoginAddress, Use::Count))
    } else if endpoint == TypeId::of::<register::v3::Request>() {
        Some((Limiter::Registration, Use::Refuse))
    } else if endpoint == TypeId::of::<check_registration_token_validity::v1::Request>() {
        Some((Limiter::RegistrationTokenValidity, Use::Count))
    } else if endpoint == TypeId::of::<update_delayed_event::unstable_v2::Request>() {
        // MSC4140's management without a token: the delay ID is the capability.
        Some((Limiter::DelayedEventMgmt, Use::Count))
    } else {
        None
    }
}

/// Refuse a request of endpoint type `T` from `client_ip` with `429` if its address is over
/// the endpoint's limit; called before the body is read.
pub fn check_before_body<T: 'static>(services: &Services, client_ip: &str) -> Result<()> {
    match address_limit::<T>() {
        None => Ok(()),
        Some((limiter, Use::Count)) => services.rate_limits.check(limiter, client_ip, None),
        Some((limiter, Use::Refuse)) => services.rate_limits.peek(limiter, client_ip, None),
    }
}
