#include "store/libpq_library.h"

#include <dlfcn.h>

#include <string>

namespace tartarus::store::internal {

Result<const LibPq*> LoadLibPq() {
  static const Result<const LibPq*> loaded = []() -> Result<const LibPq*> {
    // Never closed: connections may live until exit.
    void* handle = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = dlerror();
      return Fail(ErrorCode::kFailedPrecondition,
                  "a postgres:// store needs the PostgreSQL client library (apt install libpq5): " +
                      std::string(why ? why : "libpq.so.5 not found"));
    }
    static LibPq pq;
#define TARTARUS_LIBPQ_LOAD(name)                                      \
  pq.name = reinterpret_cast<decltype(pq.name)>(dlsym(handle, #name)); \
  if (!pq.name) return Fail(ErrorCode::kFailedPrecondition, "libpq.so.5 lacks " #name);
    TARTARUS_LIBPQ_FUNCTIONS(TARTARUS_LIBPQ_LOAD)
#undef TARTARUS_LIBPQ_LOAD
    return &pq;
  }();
  return loaded;
}

}  // namespace tartarus::store::internal
