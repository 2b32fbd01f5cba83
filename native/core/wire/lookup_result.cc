#include "wire/lookup_result.h"

namespace lazyd {

const char* lookup_result_text(LookupResult result) {
  switch (result) {
    case LookupResult::kFound: return "found";
    case LookupResult::kUnknownPid: return "no task with this pid in the checkpoint";
    case LookupResult::kNotDumped: return "no pagemap entry covers this address";
    case LookupResult::kNoData: return "the images hold no data for this page (PE_LAZY without PE_PRESENT, or PE_PARENT)";
    case LookupResult::kNotLazy: return "the page is not lazy (restore installs it eagerly)";
  }
  return "?";
}

}  // namespace lazyd
