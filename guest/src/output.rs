//! Publishing under the output policy: retryable failures are retried (`retry::PUBLISH`),
//! terminal ones are returned at once. The output binding's `create`, the input side's
//! dead-letter topic and MQTT 5 responses all publish through here.

use crate::host::{BrokerError, Host, Level};
use crate::request::Publish;
use crate::retry;

/// How long each publish waits for its acknowledgement.
pub const PUBLISH_TIMEOUT_MS: u32 = 10_000;

/// Publishes `payload` as `publish` says, retrying what may pass later.
pub fn publish_with_retries<H: Host>(
    host: &H,
    publish: &Publish,
    payload: &H::Payload,
) -> Result<(), BrokerError> {
    let mut failures = 0;
    loop {
        let error = match host.publish(publish, payload, PUBLISH_TIMEOUT_MS) {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retryable() => error,
            Err(error) => return Err(error),
        };
        failures += 1;
        let Some(wait) = retry::PUBLISH.after_failure(failures) else {
            return Err(error);
        };
        host.log(
            Level::Warn,
            &format!(
                "publish to {:?} failed (attempt {failures}), retrying: {error}",
                publish.topic
            ),
        );
        if !host.sleep(wait) {
            return Err(BrokerError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Qos;
    use crate::scripted::{Call, Scripted};

    fn publish() -> Publish {
        Publish {
            topic: "out".into(),
            qos: Qos::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        }
    }

    #[test]
    fn what_may_pass_later_is_tried_again_after_a_wait() {
        let host = Scripted::default();
        host.publish_results([
            Err(BrokerError::Unreachable("down".into())),
            Err(BrokerError::Timeout("window full".into())),
            Ok(()),
        ]);
        publish_with_retries(&host, &publish(), &b"x".to_vec()).expect("published");
        let calls = host.calls();
        let published = calls
            .iter()
            .filter(|call| matches!(call, Call::Published { .. }))
            .count();
        let slept: Vec<_> = calls
            .iter()
            .filter_map(|call| match call {
                Call::Slept(wait) => Some(*wait),
                _ => None,
            })
            .collect();
        assert_eq!(published, 3);
        assert_eq!(
            slept,
            [
                retry::PUBLISH.after_failure(1).expect("a first wait"),
                retry::PUBLISH.after_failure(2).expect("a second wait")
            ]
        );
    }

    #[test]
    fn an_unconfirmed_publish_is_not_sent_twice() {
        let host = Scripted::default();
        host.publish_results([Err(BrokerError::Unconfirmed("no PUBACK".into()))]);
        let error = publish_with_retries(&host, &publish(), &b"x".to_vec()).expect_err("failed");
        assert_eq!(error, BrokerError::Unconfirmed("no PUBACK".into()));
        assert_eq!(host.published().len(), 1);
    }

    #[test]
    fn retries_are_spent_and_a_refusal_that_may_pass_is_among_them() {
        let host = Scripted::default();
        let quota = BrokerError::Rejected(crate::host::Rejection {
            reason_code: 0x97,
            reason: "quota exceeded".into(),
            retryable: true,
        });
        host.publish_results(std::iter::repeat_n(Err(quota.clone()), 100));
        let error = publish_with_retries(&host, &publish(), &b"x".to_vec()).expect_err("failed");
        assert_eq!(error, quota);
        // The first attempt and its three retries.
        assert_eq!(host.published().len(), 4);
    }

    #[test]
    fn shutdown_during_the_wait_ends_it_as_closed() {
        let host = Scripted::default();
        host.publish_results([Err(BrokerError::Unreachable("down".into()))]);
        host.stop_sleeping();
        let error = publish_with_retries(&host, &publish(), &b"x".to_vec()).expect_err("stopped");
        assert_eq!(error, BrokerError::Closed);
    }
}
