//! The simulated web shop: its services, their routes and databases, and the
//! names its spans draw from. Data only, so that the shop can change without
//! touching how traces are built.

pub(super) struct Service {
    pub(super) name: &'static str,
    pub(super) version: &'static str,
    pub(super) language: &'static str,
    pub(super) routes: &'static [(&'static str, &'static str)],
    pub(super) db: Option<Db>,
}

pub(super) struct Db {
    pub(super) system: &'static str,
    pub(super) namespace: &'static str,
    pub(super) port: i64,
    pub(super) tables: &'static [&'static str],
}

/// The first `ENTRY_SERVICES` services receive the outside requests.
pub(super) const ENTRY_SERVICES: usize = 2;
pub(super) const SERVICES: &[Service] = &[
    Service {
        name: "frontend",
        version: "2.4.1",
        language: "nodejs",
        routes: &[
            ("GET", "/"),
            ("GET", "/product/{id}"),
            ("POST", "/cart"),
            ("POST", "/checkout"),
        ],
        db: None,
    },
    Service {
        name: "api-gateway",
        version: "1.9.0",
        language: "go",
        routes: &[
            ("GET", "/api/v1/products"),
            ("GET", "/api/v1/orders/{id}"),
            ("POST", "/api/v1/orders"),
        ],
        db: None,
    },
    Service {
        name: "cart",
        version: "3.0.2",
        language: "dotnet",
        routes: &[("GET", "/cart/{id}"), ("POST", "/cart/{id}/items")],
        db: Some(Db {
            system: "redis",
            namespace: "0",
            port: 6379,
            tables: &["carts"],
        }),
    },
    Service {
        name: "checkout",
        version: "1.12.0",
        language: "go",
        routes: &[("POST", "/checkout"), ("GET", "/checkout/{id}")],
        db: Some(Db {
            system: "postgresql",
            namespace: "orders",
            port: 5432,
            tables: &["orders", "order_items"],
        }),
    },
    Service {
        name: "payment",
        version: "0.8.5",
        language: "java",
        routes: &[("POST", "/charge"), ("POST", "/refund")],
        db: Some(Db {
            system: "postgresql",
            namespace: "payments",
            port: 5432,
            tables: &["charges", "ledger"],
        }),
    },
    Service {
        name: "inventory",
        version: "4.1.0",
        language: "rust",
        routes: &[("GET", "/stock/{id}"), ("POST", "/reserve")],
        db: Some(Db {
            system: "postgresql",
            namespace: "inventory",
            port: 5432,
            tables: &["items", "reservations"],
        }),
    },
    Service {
        name: "users",
        version: "2.0.0",
        language: "python",
        routes: &[("GET", "/users/{id}"), ("GET", "/session")],
        db: Some(Db {
            system: "mysql",
            namespace: "accounts",
            port: 3306,
            tables: &["users", "sessions"],
        }),
    },
    Service {
        name: "shipping",
        version: "1.3.7",
        language: "python",
        routes: &[("POST", "/quote"), ("GET", "/track/{id}")],
        db: Some(Db {
            system: "mongodb",
            namespace: "shipping",
            port: 27017,
            tables: &["shipments"],
        }),
    },
];

pub(super) const INTERNAL_OPERATIONS: &[&str] = &[
    "render",
    "validate_cart",
    "compute_price",
    "serialize",
    "authorize",
    "apply_discounts",
];

pub(super) const EXCEPTIONS: &[(&str, &str)] = &[
    ("java.net.SocketTimeoutException", "Read timed out"),
    ("ConnectionResetError", "connection reset by peer"),
    ("TimeoutError", "deadline exceeded after 2s"),
    ("InsufficientFunds", "card declined"),
];

pub(super) const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15",
    "okhttp/4.12.0",
];
