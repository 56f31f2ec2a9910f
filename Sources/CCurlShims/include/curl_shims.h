#ifndef CHECKPACK_CURL_SHIMS_H
#define CHECKPACK_CURL_SHIMS_H

#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot
// call: one typed wrapper per argument type.
CURLcode ckpk_curl_set_long(CURL *handle, CURLoption option, long value);
CURLcode ckpk_curl_set_offset(CURL *handle, CURLoption option, curl_off_t value);
CURLcode ckpk_curl_set_pointer(CURL *handle, CURLoption option, const void *value);

typedef size_t (*ckpk_curl_data_callback)(char *data, size_t size, size_t count, void *context);
CURLcode ckpk_curl_set_callback(CURL *handle, CURLoption option, ckpk_curl_data_callback callback);

CURLcode ckpk_curl_get_long(CURL *handle, CURLINFO info, long *value);

#endif
