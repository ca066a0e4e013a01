// Package manifest reads and writes build2's manifest format, the text
// protocol that buildfarm's controller, agent and worker speak with each
// other and with build2's bbot and brep.
//
// A manifest is a list of name-value pairs, the first of which has an empty
// name and the format version as its value (only version 1 exists). A stream
// holds several manifests, separated by pairs with empty names. The rules
// (comments, continuation lines, multi-line values, escapes, `; comment`
// splitting) follow the Manifest Format section of the bpkg manual and
// libbutl's manifest parser and serializer.
//
// The typed manifests of bbot and brep (task request, task response, task,
// result request, result, machine, bootstrapped machine, bootstrap,
// toolchain) are built on top of the pairs, with build2's field names.
package manifest
