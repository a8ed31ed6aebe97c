// libpq, loaded when a postgres:// store is first opened. Linking it would load GnuTLS,
// Kerberos and LDAP into every `tartarus` process (12-15 ms per exec, more than the
// rest of a container start's overhead), though only the control plane on PostgreSQL
// needs it. Types come from libpq-fe.h; functions are called through this table.
#pragma once

#include <libpq-fe.h>

#include "common/result.h"

namespace tartarus::store::internal {

// clang-format off
#define TARTARUS_LIBPQ_FUNCTIONS(X)                                                         \
  X(PQclear) X(PQconnectdb) X(PQconsumeInput) X(PQdb) X(PQerrorMessage) X(PQexecParams)    \
  X(PQexecPrepared) X(PQprepare)                                                            \
  X(PQfinish) X(PQfreemem) X(PQftype) X(PQgetisnull) X(PQgetlength) X(PQgetvalue)           \
  X(PQhost) X(PQnfields) X(PQnotifies) X(PQntuples) X(PQport) X(PQresultErrorField)        \
  X(PQresultStatus) X(PQsetNoticeProcessor) X(PQsocket) X(PQstatus) X(PQtransactionStatus)
// clang-format on

struct LibPq {
#define TARTARUS_LIBPQ_MEMBER(name) decltype(&::name) name = nullptr;
  TARTARUS_LIBPQ_FUNCTIONS(TARTARUS_LIBPQ_MEMBER)
#undef TARTARUS_LIBPQ_MEMBER
};

// Loads libpq.so.5 once (thread-safe); the error says which package provides it.
Result<const LibPq*> LoadLibPq();

}  // namespace tartarus::store::internal
