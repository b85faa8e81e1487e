//! `aws:` secrets with `assume_role:` load into a lease source: the role, the session policy
//! read and minified, the STS endpoint and the region it signs for, the duration, a policy's
//! own session policy, and the agent's session token placeholder.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use keyswap_config::{load_str, LeaseSource};

const SECRET_VALUE: &str = "fixture-real-value-0123456789";

#[test]
fn assume_role_loads_into_an_sts_lease_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_policy = dir.path().join("secret.json");
    let task_policy = dir.path().join("reader.json");
    std::fs::write(
        &secret_policy,
        "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"s3:*\", \"Resource\": \"*\"}]\n}\n",
    )
    .expect("write");
    std::fs::write(
        &task_policy,
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}"#,
    )
    .expect("write");
    let yaml = format!(
        r#"
version: 1
secrets:
  aws-dev:
    aws:
      access_key_id: {{from_env: KEYSWAP_FIXTURE_SECRET}}
      secret_access_key: {{from_env: KEYSWAP_FIXTURE_SECRET}}
      region: eu-west-1
      assume_role:
        role_arn: arn:aws-us-gov:iam::123456789012:role/agents/keyswap
        session_policy_file: {}
        duration: 2h
        external_id_env: KEYSWAP_FIXTURE_EXTERNAL_ID
      endpoints: {{sts: "https://sts.eu-west-1.amazonaws.com/"}}
policies:
  reader:
    aws: {{session_policy_file: {}}}
    allow:
      - host: s3.amazonaws.com
        secrets: [aws-dev]
"#,
        secret_policy.display(),
        task_policy.display()
    );
    let env = HashMap::from([
        (
            "KEYSWAP_FIXTURE_SECRET".to_string(),
            SECRET_VALUE.to_string(),
        ),
        (
            "KEYSWAP_FIXTURE_EXTERNAL_ID".to_string(),
            "external-id-0001".to_string(),
        ),
    ]);
    let config = load_str(&yaml, Path::new("keyswap.yaml"), &env)
        .unwrap_or_else(|e| panic!("assume_role must load:\n{e}"));
    let secret = &config.secrets[0];
    let Some(LeaseSource::Aws(role)) = secret.lease.as_deref() else {
        panic!("no STS lease source: {secret:?}");
    };
    assert_eq!(
        role.role_arn,
        "arn:aws-us-gov:iam::123456789012:role/agents/keyswap"
    );
    assert_eq!(role.sts, "https://sts.eu-west-1.amazonaws.com");
    assert_eq!(role.sts_region, "eu-west-1");
    assert_eq!(role.duration, Duration::from_secs(7200));
    assert!(role.external_id.is_some());
    assert_eq!(role.env_vars, ["KEYSWAP_FIXTURE_EXTERNAL_ID"]);
    let minified = role
        .session_policy
        .as_deref()
        .expect("the secret's session policy");
    assert!(!minified.contains(char::is_whitespace), "{minified}");
    let parsed: serde_json::Value = serde_json::from_str(minified).expect("JSON");
    assert_eq!(parsed["Statement"][0]["Action"], "s3:*");
    let reader = config.policy("reader").expect("policy");
    assert!(reader
        .lease_scope
        .aws_session_policy
        .as_deref()
        .is_some_and(|p| p.contains("s3:Get*")));
    let env: HashMap<String, String> = secret.agent_env().into_iter().collect();
    assert!(env["AWS_SESSION_TOKEN"].starts_with("keyswapPlaceholderSession"));
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    assert!(!format!("{secret:?}").contains(SECRET_VALUE));
}
