(function(){"use strict";
// The server renders every section (src/status/page.rs); this script only
// fetches the page again each second and moves its data-live sections in,
// so nothing is drawn twice. The one thing it works out itself is a rate,
// which needs two readings in time: from the counters the server put on
// the data-rate elements.
var prev={},busy=false,TK="duet-admin-token";
function $(i){return document.getElementById(i);}
function fb(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;if(n<1024)return n+" B";while(n>=1024&&i<u.length-1){n/=1024;i++;}return n.toFixed(1)+" "+u[i];}
function rates(t){Array.prototype.forEach.call(document.querySelectorAll("[data-rate]"),function(e){
var k=e.getAttribute("data-rate"),b=Number(e.getAttribute("data-bytes")),p=Number(e.getAttribute("data-packets")),o=prev[k],s="-";
if(o&&t>o.t&&b>=o.b&&p>=o.p){var dt=(t-o.t)/1000;s=fb(Math.round((b-o.b)/dt))+"/s · "+Math.round((p-o.p)/dt)+" pkt/s";}
prev[k]={t:t,b:b,p:p};e.textContent=s;});}
// The fetched document is inert (DOMParser runs no script and loads
// nothing); what moves in was escaped by the server, and the CSP still
// allows only this script.
function swap(doc,n){Array.prototype.forEach.call(doc.querySelectorAll("[data-live]"),function(e){var old=$(e.id);if(!old)return;
var fresh=document.importNode(e,true);fresh.setAttribute("data-updated",String(n));old.replaceWith(fresh);});
document.title=doc.title;document.body.setAttribute("data-role",doc.body.getAttribute("data-role")||"");}
var polls=0;
function poll(){if(busy)return;busy=true;
fetch("/",{cache:"no-store"}).then(function(x){if(!x.ok)throw new Error("HTTP "+x.status);return x.text();})
.then(function(s){var t=Date.now();swap(new DOMParser().parseFromString(s,"text/html"),++polls);rates(t);
$("updated").textContent="updated "+new Date(t).toLocaleTimeString();document.body.classList.remove("stale");})
.catch(function(e){document.body.classList.add("stale");$("updated").textContent="offline ("+e.message+"), retrying";})
.then(function(){busy=false;});}
function msg(s){$("msg").textContent=s;}
function act(a,name){var tok="";try{tok=localStorage.getItem(TK)||"";}catch(e){}
if(!tok){msg("paste the admin token under Admin first");var d=document.querySelector("#admin details");if(d)d.open=true;return;}
var body=null;if(a==="upgrade"){body=$("upgrade-file").files[0]||null;if(!body){msg("choose an upgrade.tar first");return;}msg("uploading "+body.name+"…");}
var u=(a==="failover"||a==="reload"||a==="pair"||a==="upgrade")?"/api/"+a:"/api/backends/"+encodeURIComponent(name)+"/"+a;
fetch(u,{method:"POST",headers:{"Authorization":"Bearer "+tok},body:body}).then(function(x){return x.text().then(function(b){msg(a+(name?" "+name:"")+": "+x.status+" "+b);poll();});})
.catch(function(e){msg(a+" failed: "+e.message);});}
document.addEventListener("click",function(ev){var b=ev.target.closest?ev.target.closest("button"):null;if(!b)return;
if(b.id==="save-token"){try{localStorage.setItem(TK,$("token").value.trim());$("token").value="";msg("token saved in this browser");}catch(e){msg("cannot store token: "+e.message);}return;}
var a=b.getAttribute("data-action");if(a)act(a,b.getAttribute("data-name"));});
rates(Date.now());setInterval(poll,1000);poll();})();
