// The owner rule of usaged's cluster epochs for nginx (njs; see nginx.conf and the README,
// Scale-out). One [base, nodes] per cluster epoch, oldest first, as given to the nodes.
var epochs = [[0, 2]];
function owner(r) {
    var m = /^\/api\/usages\/(\d{1,20})$/.exec(r.uri);
    if (!m || (r.method != 'GET' && r.method != 'HEAD')) return 'all';
    var id = Number(m[1]);   // exact below 2^53: every id usaged hands out
    var node = 'all';
    for (var i = 0; i < epochs.length; i++) {
        if (id > epochs[i][0]) node = 'node' + ((id - epochs[i][0] - 1) % epochs[i][1]);
    }
    return node;
}
export default { owner };
