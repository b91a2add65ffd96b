//! The AWS region certificates compiled into the verifier (see `certs/README.md`).

/// `(region, PEM)` for the RSA-1024 certificates of the `signature` format; `default` is the
/// legacy `CN=ec2.amazonaws.com` certificate used for regions without their own.
pub(crate) const RSA1024: &[(&str, &str)] = &[
    (
        "af-south-1",
        include_str!("../certs/rsa1024/af-south-1.pem"),
    ),
    ("ap-east-1", include_str!("../certs/rsa1024/ap-east-1.pem")),
    ("ap-east-2", include_str!("../certs/rsa1024/ap-east-2.pem")),
    (
        "ap-northeast-1",
        include_str!("../certs/rsa1024/ap-northeast-1.pem"),
    ),
    (
        "ap-northeast-2",
        include_str!("../certs/rsa1024/ap-northeast-2.pem"),
    ),
    (
        "ap-northeast-3",
        include_str!("../certs/rsa1024/ap-northeast-3.pem"),
    ),
    (
        "ap-south-1",
        include_str!("../certs/rsa1024/ap-south-1.pem"),
    ),
    (
        "ap-south-2",
        include_str!("../certs/rsa1024/ap-south-2.pem"),
    ),
    (
        "ap-southeast-1",
        include_str!("../certs/rsa1024/ap-southeast-1.pem"),
    ),
    (
        "ap-southeast-2",
        include_str!("../certs/rsa1024/ap-southeast-2.pem"),
    ),
    (
        "ap-southeast-3",
        include_str!("../certs/rsa1024/ap-southeast-3.pem"),
    ),
    (
        "ap-southeast-4",
        include_str!("../certs/rsa1024/ap-southeast-4.pem"),
    ),
    (
        "ap-southeast-5",
        include_str!("../certs/rsa1024/ap-southeast-5.pem"),
    ),
    (
        "ap-southeast-6",
        include_str!("../certs/rsa1024/ap-southeast-6.pem"),
    ),
    (
        "ap-southeast-7",
        include_str!("../certs/rsa1024/ap-southeast-7.pem"),
    ),
    (
        "ca-central-1",
        include_str!("../certs/rsa1024/ca-central-1.pem"),
    ),
    ("ca-west-1", include_str!("../certs/rsa1024/ca-west-1.pem")),
    (
        "cn-north-1",
        include_str!("../certs/rsa1024/cn-north-1.pem"),
    ),
    (
        "cn-northwest-1",
        include_str!("../certs/rsa1024/cn-northwest-1.pem"),
    ),
    ("default", include_str!("../certs/rsa1024/default.pem")),
    (
        "eu-central-1",
        include_str!("../certs/rsa1024/eu-central-1.pem"),
    ),
    (
        "eu-central-2",
        include_str!("../certs/rsa1024/eu-central-2.pem"),
    ),
    (
        "eu-north-1",
        include_str!("../certs/rsa1024/eu-north-1.pem"),
    ),
    (
        "eu-south-1",
        include_str!("../certs/rsa1024/eu-south-1.pem"),
    ),
    (
        "eu-south-2",
        include_str!("../certs/rsa1024/eu-south-2.pem"),
    ),
    ("eu-west-1", include_str!("../certs/rsa1024/eu-west-1.pem")),
    ("eu-west-2", include_str!("../certs/rsa1024/eu-west-2.pem")),
    ("eu-west-3", include_str!("../certs/rsa1024/eu-west-3.pem")),
    (
        "eusc-de-east-1",
        include_str!("../certs/rsa1024/eusc-de-east-1.pem"),
    ),
    (
        "il-central-1",
        include_str!("../certs/rsa1024/il-central-1.pem"),
    ),
    (
        "me-central-1",
        include_str!("../certs/rsa1024/me-central-1.pem"),
    ),
    (
        "me-south-1",
        include_str!("../certs/rsa1024/me-south-1.pem"),
    ),
    (
        "mx-central-1",
        include_str!("../certs/rsa1024/mx-central-1.pem"),
    ),
    ("sa-east-1", include_str!("../certs/rsa1024/sa-east-1.pem")),
    ("us-east-1", include_str!("../certs/rsa1024/us-east-1.pem")),
    ("us-east-2", include_str!("../certs/rsa1024/us-east-2.pem")),
    (
        "us-gov-east-1",
        include_str!("../certs/rsa1024/us-gov-east-1.pem"),
    ),
    (
        "us-gov-west-1",
        include_str!("../certs/rsa1024/us-gov-west-1.pem"),
    ),
    ("us-west-1", include_str!("../certs/rsa1024/us-west-1.pem")),
    ("us-west-2", include_str!("../certs/rsa1024/us-west-2.pem")),
];

/// `(region, PEM)` for the RSA-2048 certificates of the `rsa2048` PKCS#7 format.
pub(crate) const RSA2048: &[(&str, &str)] = &[
    (
        "af-south-1",
        include_str!("../certs/rsa2048/af-south-1.pem"),
    ),
    ("ap-east-1", include_str!("../certs/rsa2048/ap-east-1.pem")),
    ("ap-east-2", include_str!("../certs/rsa2048/ap-east-2.pem")),
    (
        "ap-northeast-1",
        include_str!("../certs/rsa2048/ap-northeast-1.pem"),
    ),
    (
        "ap-northeast-2",
        include_str!("../certs/rsa2048/ap-northeast-2.pem"),
    ),
    (
        "ap-northeast-3",
        include_str!("../certs/rsa2048/ap-northeast-3.pem"),
    ),
    (
        "ap-south-1",
        include_str!("../certs/rsa2048/ap-south-1.pem"),
    ),
    (
        "ap-south-2",
        include_str!("../certs/rsa2048/ap-south-2.pem"),
    ),
    (
        "ap-southeast-1",
        include_str!("../certs/rsa2048/ap-southeast-1.pem"),
    ),
    (
        "ap-southeast-2",
        include_str!("../certs/rsa2048/ap-southeast-2.pem"),
    ),
    (
        "ap-southeast-3",
        include_str!("../certs/rsa2048/ap-southeast-3.pem"),
    ),
    (
        "ap-southeast-4",
        include_str!("../certs/rsa2048/ap-southeast-4.pem"),
    ),
    (
        "ap-southeast-5",
        include_str!("../certs/rsa2048/ap-southeast-5.pem"),
    ),
    (
        "ap-southeast-6",
        include_str!("../certs/rsa2048/ap-southeast-6.pem"),
    ),
    (
        "ap-southeast-7",
        include_str!("../certs/rsa2048/ap-southeast-7.pem"),
    ),
    (
        "ca-central-1",
        include_str!("../certs/rsa2048/ca-central-1.pem"),
    ),
    ("ca-west-1", include_str!("../certs/rsa2048/ca-west-1.pem")),
    (
        "cn-north-1",
        include_str!("../certs/rsa2048/cn-north-1.pem"),
    ),
    (
        "cn-northwest-1",
        include_str!("../certs/rsa2048/cn-northwest-1.pem"),
    ),
    (
        "eu-central-1",
        include_str!("../certs/rsa2048/eu-central-1.pem"),
    ),
    (
        "eu-central-2",
        include_str!("../certs/rsa2048/eu-central-2.pem"),
    ),
    (
        "eu-north-1",
        include_str!("../certs/rsa2048/eu-north-1.pem"),
    ),
    (
        "eu-south-1",
        include_str!("../certs/rsa2048/eu-south-1.pem"),
    ),
    (
        "eu-south-2",
        include_str!("../certs/rsa2048/eu-south-2.pem"),
    ),
    ("eu-west-1", include_str!("../certs/rsa2048/eu-west-1.pem")),
    ("eu-west-2", include_str!("../certs/rsa2048/eu-west-2.pem")),
    ("eu-west-3", include_str!("../certs/rsa2048/eu-west-3.pem")),
    (
        "eusc-de-east-1",
        include_str!("../certs/rsa2048/eusc-de-east-1.pem"),
    ),
    (
        "il-central-1",
        include_str!("../certs/rsa2048/il-central-1.pem"),
    ),
    (
        "me-central-1",
        include_str!("../certs/rsa2048/me-central-1.pem"),
    ),
    (
        "me-south-1",
        include_str!("../certs/rsa2048/me-south-1.pem"),
    ),
    (
        "mx-central-1",
        include_str!("../certs/rsa2048/mx-central-1.pem"),
    ),
    ("sa-east-1", include_str!("../certs/rsa2048/sa-east-1.pem")),
    ("us-east-1", include_str!("../certs/rsa2048/us-east-1.pem")),
    ("us-east-2", include_str!("../certs/rsa2048/us-east-2.pem")),
    (
        "us-gov-east-1",
        include_str!("../certs/rsa2048/us-gov-east-1.pem"),
    ),
    (
        "us-gov-west-1",
        include_str!("../certs/rsa2048/us-gov-west-1.pem"),
    ),
    ("us-west-1", include_str!("../certs/rsa2048/us-west-1.pem")),
    ("us-west-2", include_str!("../certs/rsa2048/us-west-2.pem")),
];
