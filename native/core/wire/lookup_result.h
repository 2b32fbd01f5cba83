// What a page server can answer about a GET's pages: the result of a lookup in the images of -D
// (server/page_index.h) or in a staged store (staging/page_store.h), and its words for messages.
#pragma once

namespace lazyd {

enum class LookupResult {
  kFound,
  kUnknownPid,   // no task with this pid in the checkpoint
  kNotDumped,    // no pagemap entry covers the address
  kNoData,       // covered, but the images hold no bytes for it (PE_LAZY without PE_PRESENT, or PE_PARENT)
  kNotLazy,      // covered by an eager entry: restore already has it, CRIU clients never ask for it
};

const char* lookup_result_text(LookupResult result);

}  // namespace lazyd
