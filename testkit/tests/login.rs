//! The broker login machine's frame limit: what the driver decodes a broker connection's
//! bytes under is decided by core ([`Login::frame_max`]) and named in every dial.

use warren_core::credentials::Secret;
use warren_core::hub::{Hub, HubConfig, Output};
use warren_core::login::{Login, LoginPhase};
use warren_core::method::Tune;
use warren_testkit::hub_world::{broker_handshake, creds, epoch, hello, to_frame, RABBITMQ_TUNE};

fn config(upstream_frame_max: u32) -> HubConfig {
    HubConfig {
        upstream_frame_max,
        ..HubConfig::default()
    }
}

#[test]
fn frame_max_is_what_warren_asks_until_tune_then_the_negotiated_value() {
    let now = epoch();
    let mut login = Login::new(
        now,
        &config(65_536),
        "guest",
        &Secret::new("guest"),
        Some("/"),
        "test".into(),
    );
    assert_eq!(login.frame_max(), 65_536, "dialing");
    let _ = login.on_connected(now);
    let [start, tune, open_ok] = broker_handshake(Tune {
        frame_max: 8_192,
        ..RABBITMQ_TUNE
    });
    let _ = login.on_frame(now, &to_frame(&start));
    assert_eq!(login.phase(), LoginPhase::AwaitTune);
    assert_eq!(login.frame_max(), 65_536, "before the broker's Tune");
    let _ = login.on_frame(now, &to_frame(&tune));
    assert_eq!(login.frame_max(), 8_192, "the broker offered less");
    let _ = login.on_frame(now, &to_frame(&open_ok));
    assert_eq!(login.phase(), LoginPhase::Open);
    assert_eq!(login.frame_max(), 8_192);
}

#[test]
fn a_hub_names_the_frame_limit_in_its_dial() {
    let mut hub = Hub::new(config(32_768), creds(), 1);
    hub.add_client(epoch(), hello(8_192, 0));
    let mut dial_limits = Vec::new();
    while let Some(o) = hub.poll_output() {
        if let Output::Dial { frame_max, .. } = o {
            dial_limits.push(frame_max);
        }
    }
    assert_eq!(dial_limits, vec![32_768]);
}
