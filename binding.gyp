{
  "targets": [
    {
      "target_name": "lazyd_native",
      "sources": [
        "<!@(find native/binding native/core -name '*.cc' | sort)"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/core",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags": ["<!@(pkg-config --cflags gnutls)"],
      "libraries": ["-lpthread", "<!@(pkg-config --libs gnutls)"]
    }
  ]
}
